"""What a container must not do, proved by doing it: inside containers with and without an image,
with and without a user namespace, the system calls that would leave the container (a new
namespace by ``unshare``, ``clone`` or ``clone3``, ``mount``, the kernel's keyrings,
``ptrace``, ``setns``) are refused; and a process that allocates past its memory limit is
OOM-killed, with swap counted in the limit.

Each refusal is measured by ``helpers/syscall_probe.py``, run first on the host (root, in a
private mount namespace of its own) as the positive control: there every attempt succeeds, so a
refusal inside a container is the container's doing and not a broken probe. An image container
has only busybox: the host's /usr is bound in read-only and the host's python3 is run through
its dynamic loader.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import Cli, lab_cli
from helpers.hoststate import wait_for

pytestmark = pytest.mark.netns

TOPOLOGY = """\
name: confine
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.73.0.0/24}
containers: []
"""
TAG = "sdnctl-test:latest"
PROBE = (Path(__file__).parent / "helpers" / "syscall_probe.py").read_text()
#: What each attempt must get inside a container: the seccomp profile's EPERM, and ENOSYS for
#: clone3 (its flags are behind a pointer that seccomp cannot read, so it is refused whole, as
#: Docker does; glibc then falls back to clone, whose flags it can read).
REFUSED = {"unshare-net": errno.EPERM, "unshare-user": errno.EPERM, "mount": errno.EPERM,
           "keyctl": errno.EPERM, "add_key": errno.EPERM, "ptrace": errno.EPERM,
           "clone-newnet": errno.EPERM, "clone-newuser": errno.EPERM,
           "clone-newns": errno.EPERM, "clone3-newuser": errno.ENOSYS,
           "clone3-newnet": errno.ENOSYS, "clone-plain": 0, "thread": 0}
# (image, --userns, in a user namespace)
VARIANTS = [pytest.param(True, "private", True, id="image-userns"),
            pytest.param(True, "host", False, id="image-no-userns"),
            pytest.param(False, "private", True, id="no-image-userns"),
            pytest.param(False, "auto", False, id="no-image-no-userns")]


@pytest.fixture
def cli(tmp_path: Path, run_prefix: str, test_image: tuple[str, str]) -> Iterator[Cli]:
    path = tmp_path / "confine.yaml"
    path.write_text(TOPOLOGY)
    with lab_cli(run_prefix) as c:
        c.run("up", str(path))
        c.run("image", "load", "-i", test_image[0])
        yield c
        extra = [x["name"] for x in c.json("ps")]
        if extra:
            c.run("rm", "-f", *extra, check=False)


def elf_interpreter(path: str) -> str:
    """The dynamic loader an ELF64 executable names (its PT_INTERP)."""
    with open(path, "rb") as f:
        data = f.read(1 << 16)
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        kind, = struct.unpack_from("<I", data, phoff + i * phentsize)
        if kind == 3:  # PT_INTERP
            offset, = struct.unpack_from("<Q", data, phoff + i * phentsize + 8)
            size, = struct.unpack_from("<Q", data, phoff + i * phentsize + 32)
            return data[offset:offset + size].rstrip(b"\0").decode()
    raise AssertionError(f"{path} has no interpreter")


def python_argv(image: bool) -> list[str]:
    """How to start the host's python3 in a container: as is where the container sees the
    host's root, else from the host's /usr bound at /host-usr, through its loader."""
    python = os.path.realpath("/usr/bin/python3")
    if not image:
        return [python]
    loader = os.path.realpath(elf_interpreter(python))
    assert loader.startswith("/usr/") and python.startswith("/usr/"), (loader, python)
    return ["env", "PYTHONHOME=/host-usr", bound_usr(loader), "--library-path",
            bound_usr(os.path.dirname(loader)), bound_usr(python)]


def bound_usr(path: str) -> str:
    """Where a file of the host's /usr is in an image container (``-v /usr:/host-usr:ro``)."""
    return "/host-usr/" + path.removeprefix("/usr/")


def start(cli: Cli, name: str, image: bool, userns: str, *extra: str) -> dict[str, Any]:
    argv = ["run", "--name", name, "--host", "h1", "--network", "front", "--userns", userns,
            *extra]
    if image:
        argv += ["--image", TAG, "-v", "/usr:/host-usr:ro"]
    cli.run(*argv, "--", "sleep", "1000")
    return cli.container(name)


def probe_on_host(tmp_path: Path) -> dict[str, int]:
    """The positive control: the probe as root on the host, in a private mount namespace (its
    mount lands there and goes with it)."""
    target = tmp_path / "mnt"
    target.mkdir()
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                           "-c", PROBE, str(target)], capture_output=True, text=True,
                          timeout=60, check=True)
    result: dict[str, int] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize(("image", "userns", "in_user_ns"), VARIANTS)
def test_syscalls_that_leave_the_container_are_refused(
        cli: Cli, tmp_path: Path, image: bool, userns: str, in_user_ns: bool) -> None:
    control = probe_on_host(tmp_path)
    assert control == dict.fromkeys(REFUSED, 0), control  # every attempt can succeed

    ctr = start(cli, "jail", image, userns)
    assert ctr["state"] == "running" and ctr["in_user_ns"] is in_user_ns, ctr
    done = cli.run("exec", "jail", "--", *python_argv(image), "-c", PROBE, "/dev/shm")
    assert json.loads(done.stdout) == REFUSED

    # the tools a person would try, by name: busybox's in an image, the host's without
    tool = ["busybox"] if image else []
    for argv in ([*tool, "unshare", "-n", "true"], [*tool, "unshare", "-U", "true"],
                 [*tool, "nsenter", "-t", "1", "-n", "true"],
                 ["mount", "-t", "tmpfs", "tmpfs", "/dev/shm"]):
        refused = cli.run("exec", "jail", "--", *argv, check=False)
        assert refused.returncode != 0, (argv, refused)
        # EPERM, as each tool words it ("Operation not permitted", "permission denied")
        assert any(w in refused.stderr.lower() for w in ("not permitted", "permission denied")), \
            (argv, refused.stderr)
    assert cli.run("exec", "jail", "--", *tool, "true").returncode == 0  # the tool runs


def memory_file(cgroup: str, v1: str, v2: str) -> Path | None:
    for path in (Path("/sys/fs/cgroup/memory" + cgroup) / v1, Path("/sys/fs/cgroup" + cgroup) / v2):
        if path.exists():
            return path
    return None


def oom_kills(cgroup: str) -> int:
    """OOM kills the cgroup saw (v1 memory.oom_control or v2 memory.events)."""
    path = memory_file(cgroup, "memory.oom_control", "memory.events")
    assert path is not None, f"no memory controller for {cgroup}"
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    raise AssertionError(f"no oom_kill in {path}")


def swap_headroom(cgroup: str) -> int:
    """Bytes of swap the cgroup may use beyond its memory limit (v1: memsw minus memory; v2:
    memory.swap.max)."""
    memsw = memory_file(cgroup, "memory.memsw.limit_in_bytes", "memory.swap.max")
    assert memsw is not None, f"swap is not accounted for {cgroup}: the limit would not hold"
    if memsw.name == "memory.swap.max":
        return int(memsw.read_text())
    limit = memory_file(cgroup, "memory.limit_in_bytes", "memory.max")
    assert limit is not None
    return int(memsw.read_text()) - int(limit.read_text())


@pytest.mark.parametrize(("image", "userns", "in_user_ns"), [VARIANTS[0], VARIANTS[3]])
def test_allocating_past_the_memory_limit_is_oom_killed_with_swap_counted(
        cli: Cli, image: bool, userns: str, in_user_ns: bool) -> None:
    ctr = start(cli, "hog", image, userns, "-m", "32m")
    cgroup = ctr["cgroup"]
    assert swap_headroom(cgroup) == 0  # swap is inside the limit: it cannot absorb the excess
    before = oom_kills(cgroup)

    # positive control: well under the limit, the same allocation survives
    small = 8 << 20
    hog = (["dd", "if=/dev/zero", "of=/dev/null", f"bs={small}", "count=1"] if image else
           [*python_argv(False), "-c", f"b = b'x' * {small}"])
    assert cli.run("exec", "hog", "--", *hog).returncode == 0
    assert oom_kills(cgroup) == before

    # three times the limit, touched: killed by the kernel's OOM killer (SIGKILL: 128 + 9)
    big = 96 << 20
    hog = (["dd", "if=/dev/zero", "of=/dev/null", f"bs={big}", "count=1"] if image else
           [*python_argv(False), "-c", f"b = b'x' * {big}"])
    done = cli.run("exec", "hog", "--", *hog, check=False)
    assert done.returncode == 137, done
    wait_for(lambda: oom_kills(cgroup) > before, what="the cgroup to count the OOM kill")
    assert cli.container("hog")["state"] == "running"  # the hog died, not its container
