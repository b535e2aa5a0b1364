"""Issue 8 item 2: container start end to end, sdnctl vs `docker run` vs bare `crun run`.

Design note. Three sides start the same busybox test image (``sdnctl.lab.testimage``: two layers)
running ``sh -c "trap 'exit 0' TERM; sleep 3600 & wait"``, in each of the four network modes
(bridge, none, host, container:<donor>), one container at a time; each sample is one start,
then (timed apart) its removal. Per mode the sides alternate (``harness.alternate_many``), so
drift hits them alike.

- sdnctl: a lab host (``_sdnlab.SdnctlLab``: namespace ``<prefix>lh0`` on an underlay of its
  own), a controller in this process (SQLite store, unix socket in a temp dir) and the real agent
  as a process in the lab host, as `sdnctl up` runs them. The image is loaded into the
  controller (LoadImage). A start is the wall time of the user's command, `sdnctl run --name N
  --host h0 --network MODE --image ID -- CMD` (the CLI process included: it returns once the
  agent has reported the container running); removal `sdnctl rm N`. The very first start of the
  image on the host (fetching and unpacking its layers from the controller) is reported on its
  own and kept out of the steady-state figures. Each start is split at the moment the controller
  *recorded* the agent's report that it runs (we wrap ``State.report_status`` of the in-process
  controller, so the moment is exact): before it, the CLI's start-up, CreateContainer, the Watch
  event, the agent's pass and report; after it, the CLI noticing, printing and exiting.
- docker: Debian's docker.io, its daemon confined to a namespace of ours: ``unshare --mount``
  (private), ``nsenter --net`` into ``<prefix>dk``, then inside: a fresh sysfs (that
  namespace's), the cgroup v1 hierarchies mounted again (not the v2 one: runc refuses this
  host's hybrid layout) and overlays on /etc, /run and /opt whose upper directories are ours (the
  daemon and containerd write key.json, /run/containerd/s and /opt/containerd there). It gets its
  own --data-root, --exec-root, --pidfile, -H socket and --cgroup-parent; iptables stays on
  (Docker's own NAT rules, in that namespace). The test image is `docker load`ed; a start is
  the wall time of ``/usr/bin/docker run -d --network MODE``; removal ``docker rm -f``.
- crun: the floor (``_sdnlab.BareCrun``). The same layers (unpacked by the agent's
  ``ImageStore`` from the same archive), the same overlay root and config.json
  (``agent.ocispec``, as the agent builds it), through the agent's own runtime call
  (``OciRuntime.run``: one ``crun run -d`` from a private mount namespace, v2 hierarchy
  hidden, overlay mounted), without the agent around it.
  Network per mode: bridge and none: a new network namespace made by crun (no veth: bare crun
  has no network to attach to); host: join the namespace ``<prefix>cr`` by path; container:
  join a donor crun container's namespace by path. Removal: ``crun delete --force``.

Targets (issue 8): sdnctl at least 10x faster than docker, and within 3x of bare crun. A
missing reference (docker, crun) is an error: the script exits 1 and says what is missing.

    .venv/bin/python bench/start.py --quick   # 10 starts per side and mode (START_N=k: k)
    .venv/bin/python bench/start.py --full    # 50 starts per side and mode

START_PROFILE=1 runs the agent under cProfile and prints (and puts in the JSON) where its
passes' time goes; its figures are then inflated.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from _sdnlab import (
    COMMAND,
    TIMEOUT,
    BareCrun,
    BenchError,
    SdnctlLab,
    become_subreaper,
    run,
    wait_for,
)
from harness import (
    Measurement,
    Timer,
    alternate_many,
    bench_args,
    comparison,
    ratio,
    summary,
    unique_prefix,
    write_result,
)

from agent.kernel import cgroups
from agent.kernel.netns import create_netns, netns_path, remove_netns
from sdnctl.lab import lab
from sdnctl.lab.dockerd import DOCKER, DOCKERD, DOCKERD_SH, cgroup_v1, pids_in_mount_ns
from sdnctl.lab.testimage import DEFAULT_TAG, build_test_image
from sdnctl.v1 import sdnctl_pb2 as pb

MODES = ("bridge", "none", "host", "container")
NETWORK = "sb"  # sdnctl's bridge network
DONOR = "donor"
TARGET_DOCKER, TARGET_CRUN = 10.0, 3.0
#: What a side's first start does that the others do not.
FIRST = {"sdnctl": "the agent fetches and unpacks the image's layers",
         "docker": "the first run after `docker load`"}


# --- sdnctl ---------------------------------------------------------------------------------


class SdnctlSide:
    """`sdnctl run` and `sdnctl rm` through the CLI, against a lab of one host."""

    def __init__(self, prefix: str, workdir: str, profile: bool) -> None:
        self.lab = SdnctlLab(prefix, workdir, ("h0",), profile)
        self.reports = self.lab.reports
        self.first_start = float("nan")
        self.seq = 0
        #: per start: mode, ms until the controller recorded it running (from the CLI's
        #: launch), ms of the whole CLI process
        self.starts: list[tuple[str, float, float]] = []

    def setup(self, archive: str) -> None:
        self.lab.setup()
        self.lab.create_network(pb.Network(name=NETWORK, driver="bridge",
                                           subnet="10.80.0.0/16"))
        self.image = self.lab.load_image(archive)
        self.sdnctl = self.lab.cli()
        self.env = self.lab.cli_env()
        self.first_start = self._cli_start("bridge", DONOR)
        got = self.lab.api.GetContainer(pb.GetRequest(name=DONOR), timeout=TIMEOUT)
        self.user_ns = bool(got.status.user_ns)

    def network(self, mode: str) -> str:
        return {"bridge": NETWORK, "container": f"container:{DONOR}"}.get(mode, mode)

    def _cli_start(self, mode: str, name: str) -> float:
        argv = [self.sdnctl, "run", "--name", name, "--host", "h0", "--network",
                self.network(mode), "--image", self.image, "--", *COMMAND]
        t0 = time.perf_counter()
        out = run(argv, env=self.env, timeout=TIMEOUT)
        t1 = time.perf_counter()
        if out.strip() != name:
            raise BenchError(f"`sdnctl run` printed {out.strip()!r}, not {name!r}")
        recorded = self.reports.wait_running(name)
        if name != DONOR:  # the first start (image fetch) is not a steady-state sample
            self.starts.append((mode, (recorded - t0) * 1000, (t1 - t0) * 1000))
        return (t1 - t0) * 1000

    def sample(self, mode: str, deletes: list[float]) -> float:
        self.seq += 1
        name = f"c{self.seq}"
        started = self._cli_start(mode, name)
        with Timer() as t:
            run([self.sdnctl, "rm", name], env=self.env, timeout=TIMEOUT)
        deletes.append(t.ms)
        return started

    def breakdown(self) -> dict[str, dict[str, list[float]]]:
        """Per mode, where a CLI start's time went: until the controller recorded the agent's
        'running' (client start-up, CreateContainer, the Watch event, the agent's pass, its
        report) and the rest (the CLI seeing it, printing, exiting)."""
        out: dict[str, dict[str, list[float]]] = {}
        for mode, recorded, total in self.starts:
            got = out.setdefault(mode, {"until recorded running": [], "CLI after that": []})
            got["until recorded running"].append(recorded)
            got["CLI after that"].append(total - recorded)
        return out

    def agent_profile(self) -> dict[str, list[str]]:
        """The agent's cProfile (written when it stops): its own functions by cumulative time
        (where a pass goes) and everything by own time. It covers the whole run, removals
        included: read the start path (``setup_container``, ``observe``) from it."""
        path = self.lab.profile_path("h0")
        if not path or not os.path.exists(path):
            return {}
        stats = pstats.Stats(path)
        return {"agent_by_cumtime": _top(stats, "cumulative", 20, "/agent/"),
                "by_tottime": _top(stats, "tottime", 12)}

    def close(self) -> None:
        self.lab.close(delete=[DONOR])


# --- bare crun --------------------------------------------------------------------------------


class CrunSide:
    """Bare ``crun run -d``: bridge/none get a new namespace (lo only), host joins a namespace
    of ours, container joins a donor crun container's namespace."""

    def __init__(self, prefix: str, workdir: str) -> None:
        self.crun = BareCrun(prefix, workdir)
        self.host_ns = netns_path(f"{prefix}cr")
        self.first_start = float("nan")

    def setup(self, archive: str) -> None:
        create_netns(self.host_ns)
        self.crun.setup(archive)
        self.crun.start(None, DONOR)
        self.donor_pid = self.crun.pid(DONOR)

    def _net(self, mode: str) -> str | None:
        if mode == "host":
            return self.host_ns
        if mode == "container":
            return f"/proc/{self.donor_pid}/ns/net"
        return None

    def sample(self, mode: str, deletes: list[float]) -> float:
        cid, ms = self.crun.start(self._net(mode))
        deletes.append(self.crun.delete(cid))
        return ms

    def close(self) -> None:
        self.crun.close()
        remove_netns(self.host_ns)


# --- docker -------------------------------------------------------------------------------------

class DockerSide:
    def __init__(self, prefix: str, workdir: str) -> None:
        self.prefix = prefix
        # On the disk, not in /run: dockerd's overlay2 store and our overlays' upper dirs.
        self.dir = tempfile.mkdtemp(prefix=f"{prefix}-dk-", dir="/tmp")
        self.ns = netns_path(f"{prefix}dk")
        self.cgroup_parent = f"/{prefix}-docker"
        self.pid = 0
        self.mnt_ns = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.first_start = float("nan")

    def setup(self, archive: str) -> None:
        if not (os.access(DOCKER, os.X_OK) and os.access(DOCKERD, os.X_OK)):
            raise BenchError(f"{DOCKERD} or {DOCKER} missing (bench/setup.sh installs docker.io)")
        create_netns(self.ns)
        sock = os.path.join(self.dir, "docker.sock")
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                    "DOCKER_CONFIG": os.path.join(self.dir, "client"),
                    "DOCKER_HOST": f"unix://{sock}"}
        with open(os.path.join(self.dir, "daemon.json"), "w") as f:
            f.write("{}\n")
        argv = ["unshare", "--mount", "--propagation", "private", "--",
                "nsenter", f"--net={self.ns}", "--",
                "/bin/sh", "-c", DOCKERD_SH, "dockerd-confined", self.dir,
                DOCKERD, "--config-file", os.path.join(self.dir, "daemon.json"),
                "--data-root", os.path.join(self.dir, "data"),
                "--exec-root", os.path.join(self.dir, "exec"),
                "--pidfile", os.path.join(self.dir, "docker.pid"),
                "-H", f"unix://{sock}", "--cgroup-parent", self.cgroup_parent]
        self.log = os.path.join(self.dir, "dockerd.log")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**self.env, "CGROUP_V1": " ".join(cgroup_v1())})
        self.pid = self.proc.pid  # unshare, nsenter and sh exec: this is dockerd's PID
        with contextlib.suppress(OSError):
            self.mnt_ns = os.stat(f"/proc/{self.pid}/ns/mnt").st_ino
        wait_for(self._ready, "dockerd to answer", timeout=60, step=0.1)
        self.mnt_ns = os.stat(f"/proc/{self.pid}/ns/mnt").st_ino
        out = self.docker("load", "-i", archive)
        if DEFAULT_TAG.split(":")[0] not in out:
            raise BenchError(f"docker load did not load {DEFAULT_TAG}: {out}")
        self.first_start = self._timedrun("bridge", DONOR)[0]

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            with open(self.log) as f:
                tail = f.read()[-800:]
            raise BenchError(f"dockerd exited with {self.proc.returncode}: {tail}")
        done = subprocess.run([DOCKER, "version", "--format", "{{.Server.Version}}"],
                              env=self.env, capture_output=True, text=True)
        return done.returncode == 0

    def docker(self, *args: str) -> str:
        return run([DOCKER, *args], env=self.env)

    def _timedrun(self, mode: str, name: str = "") -> tuple[float, str]:
        network = f"container:{DONOR}" if mode == "container" else mode
        argv = [DOCKER, "run", "-d", "--network", network, *(["--name", name] if name else []),
                DEFAULT_TAG, *COMMAND]
        with Timer() as t:
            cid = run(argv, env=self.env).strip()
        return t.ms, cid

    def sample(self, mode: str, deletes: list[float]) -> float:
        started, cid = self._timedrun(mode)
        with Timer() as t:
            self.docker("rm", "-f", cid)
        deletes.append(t.ms)
        return started

    def close(self) -> None:
        """Remove the containers, stop dockerd by PID, end whatever of ours survives in its
        mount namespace (containerd, shims), then the cgroups, namespace and files."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                ids = self.docker("ps", "-aq").split()
                if ids:
                    self.docker("rm", "-f", *ids)
            with contextlib.suppress(lab.LabError):
                lab.stop_process(self.pid, grace=15)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        for pid in pids_in_mount_ns(self.mnt_ns):
            with contextlib.suppress(lab.LabError, ValueError):
                lab.stop_process(pid, grace=2)
        with contextlib.suppress(OSError):
            cgroups.remove_tree(self.cgroup_parent)
        remove_netns(self.ns)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- report ------------------------------------------------------------------------------------


def _top(stats: pstats.Stats, sort: str, n: int, *restrict: str) -> list[str]:
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats(sort).print_stats(*restrict, n)
    lines = out.getvalue().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip().startswith("ncalls")), 0)
    return [ln.rstrip() for ln in lines[start:start + n + 1] if ln.strip()]


def report(samples: dict[str, dict[str, list[float]]], deletes: dict[str, dict[str, list[float]]],
           firsts: dict[str, float],
           parts: dict[str, dict[str, list[float]]]) -> tuple[list[Measurement],
                                                               list[dict[str, Any]]]:
    ms: list[Measurement] = []
    comps: list[dict[str, Any]] = []
    for side, first in firsts.items():
        ms.append(Measurement(f"{side} first start (bridge; {FIRST[side]})", "ms", [first]))
    for mode in MODES:
        got = samples[mode]
        for side in got:
            ms.append(Measurement(f"{side} start {mode}", "ms", got[side]))
        for part, values in parts.get(mode, {}).items():
            ms.append(Measurement(f"sdnctl start {mode}: {part}", "ms", values))
        for side in deletes[mode]:
            ms.append(Measurement(f"{side} remove {mode}", "ms", deletes[mode][side]))
        sd = got["sdnctl"]
        r = ratio(got["docker"], sd)
        comps.append(comparison(f"docker/sdnctl start {mode}", r, f">= {TARGET_DOCKER:g}",
                                r >= TARGET_DOCKER))
        r = ratio(sd, got["crun"])
        comps.append(comparison(f"sdnctl/crun start {mode}", r, f"<= {TARGET_CRUN:g}",
                                r <= TARGET_CRUN))
        # the reference: how far the floor itself is from docker
        comps.append(comparison(f"docker/crun start {mode}", ratio(got["docker"], got["crun"]),
                                "", None))
        r = ratio(deletes[mode]["docker"], deletes[mode]["sdnctl"])
        comps.append(comparison(f"docker/sdnctl remove {mode}", r, "", None))
    return ms, comps


def print_summary(samples: dict[str, dict[str, list[float]]], comps: list[dict[str, Any]],
                  firsts: dict[str, float], parts: dict[str, dict[str, list[float]]],
                  deletes: dict[str, dict[str, list[float]]]) -> None:
    for side, first in firsts.items():
        print(f"{side:7} first start (bridge; {FIRST[side]}): {first:8.1f} ms")
    for mode in MODES:
        rows = [(f"{side} start", v) for side, v in samples[mode].items()]
        rows += [(f"  sdnctl {part}", v) for part, v in parts.get(mode, {}).items()]
        rows += [(f"{side} remove", v) for side, v in deletes[mode].items()]
        for what, values in rows:
            med, p10, p90 = summary(values)
            print(f"{mode:9} {what:22} median {med:8.1f} ms  p10 {p10:8.1f}  "
                  f"p90 {p90:8.1f}  (n={len(values)})")
    for c in comps:
        value = c["value"]
        shown = f"{value:6.2f}" if value == value else "     -"
        print(f"{c['name']:30} {shown}  target {c['target'] or '-':8} met {c['met']}")


def _sampler(side: Any, mode: str, deletes: list[float]) -> Callable[[], float]:
    return lambda: float(side.sample(mode, deletes))


def main() -> int:
    args = bench_args(__doc__.splitlines()[0])
    n = int(os.environ.get("START_N", 10 if args.quick else 50))
    profile = os.environ.get("START_PROFILE", "") not in ("", "0")
    missing = [path for path in (DOCKER, DOCKERD, "/usr/bin/crun") if not os.access(path, os.X_OK)]
    if missing:  # before building anything
        raise BenchError(f"missing reference: {', '.join(missing)} (bench/setup.sh installs "
                         "docker.io and crun)")
    prefix = unique_prefix("st")
    workdir = tempfile.mkdtemp(prefix=f"{prefix}-", dir="/run")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    become_subreaper()
    sides: dict[str, Any] = {}
    notes: list[str] = []
    try:
        archive = os.path.join(workdir, "image.tar")
        build_test_image(archive)
        sides["sdnctl"] = SdnctlSide(prefix, workdir, profile)
        sides["sdnctl"].setup(archive)
        sides["crun"] = CrunSide(prefix, workdir)
        sides["crun"].setup(archive)
        sides["docker"] = DockerSide(prefix, workdir)
        sides["docker"].setup(archive)  # no docker, no comparison: an error, not a "-"
        firsts = {name: side.first_start for name, side in sides.items()
                  if side.first_start == side.first_start}  # crun has none (NaN)
        samples: dict[str, dict[str, list[float]]] = {}
        deletes: dict[str, dict[str, list[float]]] = {}
        for mode in MODES:
            deletes[mode] = {name: [] for name in sides}
            samples[mode] = alternate_many(
                {name: _sampler(side, mode, deletes[mode][name]) for name, side in sides.items()},
                n)
        parts = sides["sdnctl"].breakdown()
        ms, comps = report(samples, deletes, firsts, parts)
        print_summary(samples, comps, firsts, parts, deletes)
        notes.append(f"{n} starts per side and mode, sides alternating; sdnctl: wall time of "
                     "`sdnctl run --image ID` (the CLI process included: it returns once the "
                     "agent reports the container running); docker: wall time of `docker run -d`"
                     "; crun: the agent's runtime call alone (one `crun run -d`); removal: "
                     "`sdnctl rm`, `docker rm -f`, `crun delete --force`")
        notes.append("sdnctl's containers ran " + ("in" if sides["sdnctl"].user_ns else
                     "without") + " a user namespace (its default for an image container: "
                     "`--userns auto`); docker's and bare crun's without")
        notes.append("bare crun does no network setup: its bridge/none containers get a fresh "
                     "namespace with lo only (sdnctl's bridge includes the veth attach)")
        doc: dict[str, Any] = {"mode": "quick" if args.quick else "full",
                               "params": {"starts": n, "modes": list(MODES),
                                          "command": list(COMMAND)},
                               "measurements": ms, "comparisons": comps, "notes": notes}
        if profile:
            notes.append("START_PROFILE: the agent ran under cProfile, so sdnctl's figures are "
                         "inflated; read the profile, not the ratios")
            sdn = sides.pop("sdnctl")
            sdn.close()  # the agent writes its profile when it stops
            doc["profile"] = sdn.agent_profile()
            for key, lines in doc["profile"].items():
                print(f"-- agent cProfile, {key} (the whole run):")
                print("\n".join(lines))
        print(f"wrote {write_result('start', doc)}")
    finally:
        for side in reversed(list(sides.values())):
            try:
                side.close()
            except Exception as e:  # keep cleaning up the others
                print(f"cleanup failed: {e}", file=sys.stderr)
        for path in glob.glob(netns_path(f"{prefix}*")):
            remove_netns(path)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        print(f"bench/start.py: error: {e}", file=sys.stderr)
        sys.exit(1)
