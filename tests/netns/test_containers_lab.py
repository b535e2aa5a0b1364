"""Real containers on a lab host: an image loaded through the controller, run by crun under the
agent, proved from inside (hostname, PID 1, processes, root filesystem, copy-on-write, memory
limit, capabilities) and from outside (upper directory, cgroup, mounts, processes) — and gone
without a trace after `rm` and `down`."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import Cli, lab_cli
from helpers.hoststate import wait_for

from agent.kernel import cgroups
from agent.ocispec import USERNS_BASE
from sdnctl.api.model import DEFAULT_CAPABILITIES

pytestmark = pytest.mark.netns

TOPOLOGY = """\
name: boxes
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.71.0.0/24}
containers: []
"""

TAG = "sdnctl-test:latest"

#: Bits of the capabilities in DEFAULT_CAPABILITIES (linux/capability.h numbers).
CAP_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
            "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13,
            "SYS_CHROOT": 18, "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31}


@pytest.fixture
def image_file(test_image: tuple[str, str]) -> tuple[str, str]:
    return test_image


@pytest.fixture
def cli(tmp_path: Path, run_prefix: str, image_file: tuple[str, str]) -> Iterator[Cli]:
    path = tmp_path / "boxes.yaml"
    path.write_text(TOPOLOGY)
    with lab_cli(run_prefix) as c:
        c.run("up", str(path))
        c.run("image", "load", "-i", image_file[0])
        yield c
        extra = [x["name"] for x in c.json("ps")]
        if extra:
            c.run("rm", "-f", *extra, check=False)


def run(cli: Cli, name: str, *args: str) -> dict[str, Any]:
    cli.run("run", "--name", name, "--host", "h1", "--network", "front", "--image", TAG, *args)
    return cli.container(name)


def ex(cli: Cli, name: str, *cmd: str) -> str:
    return str(cli.run("exec", name, "--", *cmd).stdout)


def agent_dir(ctr: dict[str, Any]) -> Path:
    """The agent's run directory: its runtime's state directory lives in it."""
    return Path(ctr["runtime_root"]).parent


def mounts_mentioning(text: str) -> list[str]:
    """Mounts in ANY process's mount namespace that name ``text`` (our leak detector)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/mountinfo") as f:
                found += [line for line in f if text in line]
        except OSError:
            continue
    return found


def children_of(pid: int) -> list[tuple[int, str, str]]:
    """The children of process ``pid``: (PID, command name, state letter)."""
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                listed = f.read().split()
        except FileNotFoundError:  # (the thread ended meanwhile)
            continue
        for child in listed:
            try:
                with open(f"/proc/{child}/stat") as st:
                    head, _, tail = st.read().rpartition(")")
            except FileNotFoundError:  # (reaped meanwhile)
                continue
            found.append((int(child), head.split("(", 1)[1], tail.split()[0]))
    return found


def test_container_from_an_image_is_isolated(cli: Cli, image_file: tuple[str, str]) -> None:
    ctr = run(cli, "box", "-m", "48m", "--pids-limit", "64", "--", "sh", "-c",
              "echo hello from $(hostname); exec sleep 1000")
    assert ctr["state"] == "running", ctr
    assert ctr["image_id"] == image_file[1]
    store = agent_dir(ctr) / "store"

    # UTS: its own hostname; PID: the command is PID 1 and only its own processes are seen.
    assert ex(cli, "box", "hostname").strip() == "box"
    assert ex(cli, "box", "cat", "/proc/1/cmdline") == "sleep\x001000\x00"
    pids = sorted(int(p) for p in ex(cli, "box", "ls", "/proc").split() if p.isdigit())
    assert pids[0] == 1 and len(pids) <= 3, pids  # sleep, the ls itself (and its exec parent)
    # mount: its root is the image (both layers applied), not the host's.
    assert ex(cli, "box", "cat", "/etc/sdnctl-image").strip() == TAG
    assert "new-file" in ex(cli, "box", "ls", "/opt/opaque")
    assert "old-file" not in ex(cli, "box", "ls", "/opt/opaque")  # opaque directory
    assert cli.run("exec", "box", "--", "test", "-e", "/etc/sdnctl-test-removed",
                   check=False).returncode == 1  # whiteout
    assert Path("/etc/debian_version").exists()
    assert cli.run("exec", "box", "--", "test", "-e", "/etc/debian_version",
                   check=False).returncode == 1

    # Copy-on-write: what it writes lands in its upper directory, never in the image store.
    ex(cli, "box", "sh", "-c", "echo written > /written; echo changed >> /etc/sdnctl-image")
    upper = store / "containers" / "box" / "upper"
    assert (upper / "written").read_text() == "written\n"
    assert (upper / "etc" / "sdnctl-image").read_text() == f"{TAG}\nchanged\n"
    # (the layers as unpacked, and the copy shifted to its user namespace's range)
    layer_copies = [p for d in store.glob("layers*") for p in d.rglob("sdnctl-image")]
    assert layer_copies and all(p.read_text() == f"{TAG}\n" for p in layer_copies)

    # Logs: what the command printed.
    assert "hello from box" in cli.run("logs", "box").stdout

    # cgroups: the limits, and live usage, in inspect; the memory limit is enforced.
    info = cli.container("box")
    assert info["resources"]["memory"] == 48 * 1024 * 1024
    assert info["resources"]["pids_limit"] == 64
    assert info["usage"] and info["usage"]["memory"] > 0 and info["usage"]["pids"] >= 1
    hog = cli.run("exec", "box", "--", "sh", "-c",
                  "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived", check=False)
    assert "survived" not in hog.stdout and hog.returncode != 0, hog
    assert cgroup_oom_kills(info["cgroup"]) >= 1

    # stop keeps its files; start runs it again with them.
    cli.run("stop", "box")
    assert cli.container("box")["state"] == "exited"
    cli.run("start", "box")
    assert cli.container("box")["state"] == "running"
    assert ex(cli, "box", "cat", "/written") == "written\n"

    # rm: no process, mount, cgroup or upper directory is left.
    pid, cgroup = cli.container("box")["pid"], info["cgroup"]
    cli.run("rm", "box")
    assert not Path(f"/proc/{pid}").exists()
    assert not cgroups.exists(cgroup)
    assert not (store / "containers" / "box").exists()
    assert not mounts_mentioning(str(store))


def cgroup_oom_kills(cgroup: str) -> int:
    """OOM kills the cgroup saw (v1 memory.oom_control or v2 memory.events)."""
    for base, name in (("/sys/fs/cgroup/memory", "memory.oom_control"),
                       ("/sys/fs/cgroup", "memory.events")):
        path = Path(base + cgroup) / name
        if path.exists():
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0


def test_exit_codes_and_restart_policies(cli: Cli) -> None:
    run(cli, "once", "--", "sh", "-c", "echo once; exit 7")
    wait_for(lambda: cli.container("once")["state"] == "exited", what="once to exit")
    assert cli.container("once")["exit_code"] == 7

    run(cli, "again", "--restart", "always", "--", "sh", "-c", "echo ran; sleep 0.3; exit 0")
    wait_for(lambda: cli.container("again")["restarts"] >= 2, what="two restarts")
    assert cli.run("logs", "again").stdout.count("ran") >= 3

    run(cli, "fixed", "--restart", "on-failure", "--", "sh", "-c", "exit 0")
    run(cli, "broken", "--restart", "on-failure", "--", "sh", "-c", "exit 1")
    wait_for(lambda: cli.container("fixed")["state"] == "exited", what="fixed to exit")
    # The positive control, started after it with the same policy: once a failure was
    # restarted (after RESTART_DELAY), the clean exit had its chance to be restarted too.
    wait_for(lambda: cli.container("broken")["restarts"] >= 1, what="broken to restart")
    assert cli.container("fixed")["restarts"] == 0
    assert cli.container("fixed")["state"] == "exited"
    # Every start left the runtime's intermediate process to the agent (a subreaper): the
    # agent reaps those, and only those (the exit codes above are the containers' own).
    agent = json.loads((cli.run_dir / "lab" / "boxes.json").read_text())["agents"]["h1"]["pid"]
    run(cli, "steady", "--", "sleep", "1000")
    assert cli.container("steady")["pid"] in [pid for pid, _, _ in children_of(agent)]
    wait_for(lambda: not [c for c in children_of(agent) if c[1:] == ("crun", "Z")],
             what="the agent to reap the runtime's strays")

    # rm of several: a missing one is named and none goes; with -f, all that exist go at
    # once (one request), the running one stopped, each named as it goes.
    refused = cli.run("rm", "once", "nosuch", "again", check=False)
    assert refused.returncode != 0 and "nosuch" in refused.stderr, refused
    assert {c["name"] for c in cli.json("ps")} >= {"once", "again", "fixed", "broken"}
    pid = cli.container("again")["pid"]
    gone = cli.run("rm", "-f", "once", "nosuch", "again", "fixed", "broken", "steady")
    assert sorted(gone.stdout.split()) == ["again", "broken", "fixed", "once", "steady"]
    assert not cli.json("ps")
    assert not pid or not Path(f"/proc/{pid}").exists()


def test_pid1_privileges_and_user_namespace(cli: Cli) -> None:
    run(cli, "plain", "--", "sleep", "1000")
    status = dict(line.split(":\t", 1) for line in
                  ex(cli, "plain", "cat", "/proc/1/status").splitlines() if ":\t" in line)
    want = sum(1 << CAP_BITS[c] for c in DEFAULT_CAPABILITIES)
    assert int(status["CapEff"], 16) == want  # Docker's default set, without NET_RAW
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    raw = cli.run("exec", "plain", "--", "ping", "-c", "1", "-W", "1", "10.71.0.1",
                  check=False)
    assert raw.returncode != 0 and "permission denied" in raw.stderr  # no raw sockets
    run(cli, "pinger", "--cap-add", "NET_RAW", "--", "sleep", "1000")
    assert cli.run("exec", "pinger", "--", "ping", "-c", "1", "-W", "1", "10.71.0.1",
                   check=False).returncode == 0  # unless asked for

    # an image container gets a user namespace by default; one that adds a capability does not
    assert cli.container("plain")["in_user_ns"] and not cli.container("pinger")["in_user_ns"]
    assert ex(cli, "plain", "cat", "/proc/1/uid_map").split() == ["0", str(USERNS_BASE), "65536"]
    run(cli, "hostns", "--userns", "host", "--", "sleep", "1000")
    assert ex(cli, "hostns", "cat", "/proc/1/uid_map").split() == ["0", "0", "4294967295"]
    assert not cli.container("hostns")["in_user_ns"]

    run(cli, "mapped", "--userns", "private", "--", "sleep", "1000")
    uid_map = ex(cli, "mapped", "cat", "/proc/1/uid_map").split()
    assert uid_map == ["0", str(USERNS_BASE), "65536"]
    host_pid = cli.container("mapped")["pid"]
    assert os.stat(f"/proc/{host_pid}").st_uid == USERNS_BASE  # root inside, nobody outside
    ex(cli, "mapped", "touch", "/tmp/ok")  # it can still write its own files
    # the image's files are its root's (a shifted copy of the layers), and low ports bind
    assert ex(cli, "mapped", "stat", "-c", "%u", "/etc/passwd").strip() == "0"
    ex(cli, "mapped", "sh", "-c", "echo changed >> /etc/sdnctl-image")
    ex(cli, "mapped", "busybox", "httpd", "-p", "80")  # daemonizes once it has bound


def test_image_verbs_round_trip_and_hostile_archives(cli: Cli, tmp_path: Path,
                                                     image_file: tuple[str, str]) -> None:
    listed = cli.json("image", "ls")
    assert [i["id"] for i in listed] == [image_file[1]]
    assert listed[0]["repo_tags"] == [TAG] and len(listed[0]["layers"]) >= 2

    run(cli, "user", "--", "sleep", "1000")
    refused = cli.run("image", "rm", TAG, check=False)
    assert refused.returncode == 1 and "used by container(s) user" in refused.stderr
    cli.run("rm", "user")

    saved = tmp_path / "saved.tar"
    cli.run("image", "save", "-o", str(saved), TAG)
    with tarfile.open(saved) as tar:
        assert "manifest.json" in tar.getnames()
    cli.run("image", "rm", TAG)
    assert cli.json("image", "ls") == []
    loaded = cli.run("image", "load", "-i", str(saved)).stdout
    assert image_file[1] in loaded  # the same image ID after load -> save -> load

    sentinel = tmp_path / "sentinel"
    sentinel.write_text("untouched")
    evil = tmp_path / "evil.tar"
    make_escaping_archive(str(image_file[0]), str(evil))
    before = cli.json("image", "ls")
    bad = cli.run("image", "load", "-i", str(evil), check=False)
    assert bad.returncode == 1 and "climbs out" in bad.stderr, bad.stderr
    assert cli.json("image", "ls") == before
    assert sentinel.read_text() == "untouched"


def make_escaping_archive(source: str, dest: str) -> None:
    """The test image with one more member in its manifest's first layer path: ../sentinel."""
    import io

    with tarfile.open(source) as src, tarfile.open(dest, "w") as out:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            out.addfile(member, data)
        payload = b"pwned"
        info = tarfile.TarInfo("../sentinel")
        info.size = len(payload)
        out.addfile(info, io.BytesIO(payload))


def test_volumes_named_and_bound(cli: Cli, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "from-host").write_text("hello")
    ctr = run(cli, "vol", "-v", "data:/data", "-v", f"{shared}:/shared:ro", "--",
              "sh", "-c", "echo kept > /data/file; exec sleep 1000")
    assert ex(cli, "vol", "cat", "/shared/from-host") == "hello"
    refused = cli.run("exec", "vol", "--", "touch", "/shared/new", check=False)
    assert refused.returncode != 0 and not (shared / "new").exists()  # read-only
    volume = agent_dir(ctr) / "store" / "volumes" / "data"
    wait_for(lambda: (volume / "file").exists(), what="the volume's file")
    cli.run("rm", "vol")
    assert (volume / "file").read_text() == "kept\n"  # a named volume outlives its container
    run(cli, "vol2", "-v", "data:/data", "--", "sleep", "1000")
    assert ex(cli, "vol2", "cat", "/data/file") == "kept\n"
    # exec -it: a terminal inside, and what we type reaches the command (script gives us a pty)
    line = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "sdnctl.main", "exec", "-it",
                                              "vol2", "--", "sh", "-c", "tty; read x; echo got=$x"))
    typed = subprocess.run(["script", "-qec", line, "/dev/null"], input="typed\n", text=True,
                           capture_output=True, env=cli.env, timeout=30)
    assert "/dev/pts/" in typed.stdout and "got=typed" in typed.stdout, typed
    escaping = cli.run("run", "--name", "bad", "--host", "h1", "--image", TAG, "-v",
                       "data:/data/../../etc", "--", "true", check=False)
    assert escaping.returncode == 1 and "volumes[0]" in escaping.stderr
