"""Issue 8 item 2: container start end to end, sdnctl vs `docker run` vs bare `crun run`.

Design note. Three sides start the same busybox test image (``sdnctl.lab.testimage``: two layers)
running ``sh -c "trap 'exit 0' TERM; sleep 3600 & wait"``, in each of the four network modes
(bridge, none, host, container:<donor>), one container at a time; each sample is one start,
then (timed apart) its removal. Per mode the sides alternate (``harness.alternate_many``), so
drift hits them alike.

- sdnctl: a lab host (namespace ``<prefix>lh0`` on an underlay of its own), a controller in this
  process (SQLite store, unix socket in a temp dir) and the real agent as a process in the lab
  host, as `sdnctl up` runs them. The image is loaded into the controller (LoadImage). A start
  is timed from the CreateContainer RPC until the controller has *recorded* the agent's report
  that the container runs: we wrap ``State.report_status`` of the in-process controller, so
  the moment is exact and nothing polls. Removal: DeleteContainer until the agent reports a
  revision at least the delete's. The very first start of the image on the host (fetching and
  unpacking its layers from the controller) is reported on its own and kept out of the
  steady-state figures. Each start is split into the CreateContainer RPC, the agent's
  reconciliation pass that started it (the agent logs its duration per revision) and the rest
  (the Watch event reaching the agent, its report, the controller recording it).
- docker: Debian's docker.io, its daemon confined to a namespace of ours: ``unshare --mount``
  (private), ``nsenter --net`` into ``<prefix>dk``, then inside: a fresh sysfs (that
  namespace's), the cgroup v1 hierarchies mounted again (not the v2 one: runc refuses this
  host's hybrid layout) and overlays on /etc, /run and /opt whose upper directories are ours (the
  daemon and containerd write key.json, /run/containerd/s and /opt/containerd there). It gets its
  own --data-root, --exec-root, --pidfile, -H socket and --cgroup-parent; iptables stays on
  (Docker's own NAT rules, in that namespace). The test image is `docker load`ed; a start is
  the wall time of ``/usr/bin/docker run -d --network MODE``; removal ``docker rm -f``.
- crun: the floor. The same layers (unpacked by the agent's ``ImageStore`` from the same
  archive), the same overlay root and config.json (``agent.ocispec``, as the agent builds it),
  through the agent's runtime wrapper (``OciRuntime``: private mount namespace, v2 hierarchy
  hidden, overlay mounted) but one ``crun run -d`` instead of the agent's create + start.
  Network per mode: bridge and none: a new network namespace made by crun (no veth: bare crun
  has no network to attach to); host: join the namespace ``<prefix>cr`` by path; container:
  join a donor crun container's namespace by path. Removal: ``crun delete --force``.

Targets (issue 8): sdnctl at least 10x faster than docker, and within 3x of bare crun.

    .venv/bin/python bench/start.py --quick   # 10 starts per side and mode (START_N=k: k)
    .venv/bin/python bench/start.py --full    # 50 starts per side and mode

START_PROFILE=1 runs the agent under cProfile and prints (and puts in the JSON) where its
passes' time goes; its figures are then inflated.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import io
import json
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
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

from agent import ocispec
from agent.imagestore import ImageStore
from agent.kernel import cgroups, procs
from agent.kernel.netns import create_netns, netns_path, remove_netns
from agent.layout import SANDBOX_DIRS, default_cgroup_parent
from agent.runtime import OciRuntime, Rootfs
from sdnctl.api.imagefmt import BlobStore, import_archive
from sdnctl.api.model import DEFAULT_CAPABILITIES, ContainerStatus
from sdnctl.controller.server import create_server
from sdnctl.controller.state import State
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.lab import lab
from sdnctl.lab.testimage import DEFAULT_TAG, build_test_image
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

MODES = ("bridge", "none", "host", "container")
#: What every container runs: busybox sh (PID 1) waiting on a sleep, and leaving on SIGTERM. PID 1
#: ignores signals it has no handler for: a bare `sleep` would make a graceful stop (sdnctl's
#: delete: SIGTERM, grace, SIGKILL) wait out the grace period, which is not what we time here.
COMMAND = ("sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait")
NETWORK = "sb"  # sdnctl's bridge network
DONOR = "donor"
DOCKER = "/usr/bin/docker"  # Debian's client, matching its daemon (not /usr/local/bin/docker)
DOCKERD = "/usr/sbin/dockerd"
TIMEOUT = 30.0
PASS_RE = re.compile(r"revision (\d+): \d+ action\(s\) in (\d+) ms")
TARGET_DOCKER, TARGET_CRUN = 10.0, 3.0
PR_SET_CHILD_SUBREAPER = 36
#: What a side's first start does that the others do not.
FIRST = {"sdnctl": "the agent fetches and unpacks the image's layers",
         "docker": "the first run after `docker load`"}


class BenchError(RuntimeError):
    pass


def _run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise BenchError(f"could not run {' '.join(argv[:6])}: "
                         f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc.stdout


def _wait(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT,
          step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(step)


# --- sdnctl ---------------------------------------------------------------------------------


class Reports:
    """The agent's status reports as the controller records them (``State.report_status``
    wrapped in this process): per container its last state and when it was recorded, per host
    the last revision it reported realised."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.states: dict[str, tuple[str, str, float]] = {}  # name -> (state, message, when)
        self.revision = 0
        self._original: Callable[..., None] | None = None

    def install(self) -> None:
        original = State.report_status
        self._original = original

        def report_status(state: State, host: str, statuses: Iterable[ContainerStatus],
                          observed_revision: int = 0) -> None:
            statuses = list(statuses)
            original(state, host, statuses, observed_revision)
            now = time.perf_counter()
            with self.cond:
                for s in statuses:
                    self.states[s.name] = (s.state, s.message, now)
                self.revision = max(self.revision, observed_revision)
                self.cond.notify_all()

        setattr(State, "report_status", report_status)  # noqa: B010 (a method, on purpose)

    def uninstall(self) -> None:
        if self._original is not None:
            setattr(State, "report_status", self._original)  # noqa: B010

    def wait_running(self, name: str) -> float:
        """The perf_counter time the controller recorded ``name`` running."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.states.get(name, ("",))[0]
                                      in ("running", "error", "exited"), TIMEOUT):
                raise BenchError(f"container {name!r} not reported running within {TIMEOUT}s")
            state, message, when = self.states[name]
        if state != "running":
            raise BenchError(f"container {name!r} is {state}: {message}")
        return when

    def wait_revision(self, revision: int) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: self.revision >= revision, TIMEOUT):
                raise BenchError(f"revision {revision} not realised within {TIMEOUT}s")
            return time.perf_counter()


class SdnctlSide:
    def __init__(self, prefix: str, workdir: str, profile: bool) -> None:
        self.prefix, self.workdir, self.profile = prefix, workdir, profile
        self.reports = Reports()
        self.lab = lab.Lab(f"{prefix}l")  # not a prefix of our other namespaces' names
        self.run_dir = os.path.join(workdir, "agent")
        self.profile_path = os.path.join(workdir, "agent.prof") if profile else ""
        self.server: Any = None
        self.store: SqliteStore | None = None
        self.channel: grpc.Channel | None = None
        self.agent_pid = 0
        self.agent_start: int | None = None
        self.first_start = float("nan")
        self.starts: list[tuple[str, int, float, float]] = []  # mode, revision, RPC, total ms
        self.agent_log = os.path.join(workdir, "agent.log")

    def setup(self, archive: str) -> None:
        """Build everything (``close`` undoes whatever of it was built)."""
        self.reports.install()
        self.lab.ensure_underlay()
        host = self.lab.ensure_host("h0", 0)
        self.store = SqliteStore(os.path.join(self.workdir, "controller.db"))
        self.server = create_server(f"unix:{self.workdir}/controller.sock", self.store,
                                    sweep_interval=0)
        self.channel = grpc.insecure_channel(self.server.address)
        self.api = pb_grpc.ControllerStub(self.channel)
        self.api.CreateHost(pb.CreateHostRequest(host=pb.Host(
            name="h0", underlay_ip=host.underlay_ip, lab=True)), timeout=10)
        self.api.CreateNetwork(pb.CreateNetworkRequest(network=pb.Network(
            name=NETWORK, driver="bridge", subnet="10.80.0.0/16")), timeout=10)
        os.makedirs(self.run_dir)
        python = [sys.executable, *(["-m", "cProfile", "-o", self.profile_path]
                                    if self.profile else [])]
        argv = [*python, "-m", "agent.main", "--host", "h0", "--controller",
                self.server.address, "--underlay-ip", host.underlay_ip, "--underlay-dev",
                host.underlay_dev, "--netns", host.netns, "--run-dir", self.run_dir,
                "--store-dir", os.path.join(self.run_dir, "store")]
        self.agent_pid = lab.spawn_in_netns(host.netns, argv, self.agent_log)
        self.agent_start = lab.process_start_time(self.agent_pid)
        _wait(self._agent_connected, "the agent to connect")
        reply = self.api.LoadImage(_chunks(archive), timeout=120)
        self.image = reply.images[0].id
        self.seq = 0
        self.first_start = self.start("bridge", name=DONOR)

    def _agent_connected(self) -> bool:
        got = self.api.GetHost(pb.GetRequest(name="h0"), timeout=10)
        return got.agent_connected and got.agent_pid == self.agent_pid

    def network(self, mode: str) -> str:
        return {"bridge": NETWORK, "container": f"container:{DONOR}"}.get(mode, mode)

    def start(self, mode: str, name: str = "") -> float:
        """One start in ``mode`` (ms); the container keeps running (``delete`` removes it)."""
        if not name:
            self.seq += 1
            name = f"c{self.seq}"
        ctr = pb.Container(name=name, host="h0", network=self.network(mode), image=self.image,
                           command=list(COMMAND))
        t0 = time.perf_counter()
        reply = self.api.CreateContainer(pb.CreateContainerRequest(container=ctr),
                                         timeout=TIMEOUT)
        t_reply = time.perf_counter()
        self.last = name
        total = (self.reports.wait_running(name) - t0) * 1000
        if name != DONOR:  # the first start (image fetch) is not a steady-state sample
            self.starts.append((mode, reply.revision, (t_reply - t0) * 1000, total))
        return total

    def delete(self, name: str) -> float:
        t0 = time.perf_counter()
        reply = self.api.DeleteContainer(pb.DeleteRequest(name=name), timeout=TIMEOUT)
        return (self.reports.wait_revision(reply.revision) - t0) * 1000

    def sample(self, mode: str, deletes: list[float]) -> float:
        started = self.start(mode)
        deletes.append(self.delete(self.last))
        return started

    def breakdown(self) -> dict[str, dict[str, list[float]]]:
        """Per mode, where a start's time went: the CreateContainer RPC, the agent's
        reconciliation pass that started it (from its log: "revision N: K action(s) in X ms"),
        and the rest (the Watch event reaching the agent, its status report, the controller
        recording it)."""
        passes: dict[int, float] = {}
        with open(self.agent_log) as f:
            for line in f:
                found = PASS_RE.search(line)
                if found:
                    passes[int(found[1])] = float(found[2])
        out: dict[str, dict[str, list[float]]] = {}
        for mode, revision, rpc, total in self.starts:
            realised = [r for r in passes if r >= revision]
            if mode not in MODES or not realised:
                continue
            agent = passes[min(realised)]
            got = out.setdefault(mode, {"rpc": [], "agent pass": [], "rest": []})
            got["rpc"].append(rpc)
            got["agent pass"].append(agent)
            got["rest"].append(total - rpc - agent)
        return out

    def agent_profile(self) -> dict[str, list[str]]:
        """The agent's cProfile (written when it stops): its own functions by cumulative time
        (where a pass goes) and everything by own time. It covers the whole run, removals
        included: read the start path (``setup_container``, ``observe``) from it."""
        if not self.profile_path or not os.path.exists(self.profile_path):
            return {}
        stats = pstats.Stats(self.profile_path)
        return {"agent_by_cumtime": _top(stats, "cumulative", 20, "/agent/"),
                "by_tottime": _top(stats, "tottime", 12)}

    def close(self) -> None:
        errors: list[str] = []
        if self.agent_pid:
            with contextlib.suppress(grpc.RpcError, BenchError):
                self.delete(DONOR)
            try:
                lab.stop_process(self.agent_pid, grace=10, start_time=self.agent_start)
            except lab.LabError as e:
                errors.append(str(e))
            self.agent_pid = 0
        _sweep_agent(self.run_dir)
        if self.channel is not None:
            self.channel.close()
        if self.server is not None:
            self.server.stop(grace=0)
        if self.store is not None:
            self.store.close()
        self.reports.uninstall()
        try:
            self.lab.teardown()
        except Exception as e:
            errors.append(str(e))
        if errors:
            print(f"sdnctl side cleanup: {errors}", file=sys.stderr)


def _sweep_agent(run_dir: str) -> None:
    """What a stopped agent may leave, swept as `sdnctl down` does: container processes (by PID
    and start time), pinned namespaces, cgroups."""
    ctr_dir = os.path.join(run_dir, "containers")
    for pidfile in glob.glob(os.path.join(ctr_dir, "*.pid")):
        info = procs.read_pidfile(pidfile)
        if info is not None:
            with contextlib.suppress(Exception):
                procs.stop(info, grace=0.5)
    for sub in SANDBOX_DIRS.values():
        for path in glob.glob(os.path.join(run_dir, sub, "*")):
            remove_netns(path)
    with contextlib.suppress(OSError):
        cgroups.remove_tree(default_cgroup_parent(run_dir))


def _chunks(archive: str) -> Iterator[pb.ImageChunk]:
    with open(archive, "rb") as f:
        while chunk := f.read(1 << 20):
            yield pb.ImageChunk(data=chunk)


# --- bare crun --------------------------------------------------------------------------------


class ArchiveFetcher:
    """``agent.imagestore.Fetcher`` over a docker-save archive imported into a blob store."""

    def __init__(self, archive: str, root: str) -> None:
        self.blobs = BlobStore(root)
        self.images = {image.id: image for image in import_archive(archive, self.blobs)}

    def image(self, image_id: str) -> tuple[bytes, tuple[str, ...]]:
        with self.blobs.open(image_id) as f:
            return f.read(), self.images[image_id].layers

    def blob(self, digest: str) -> Iterator[bytes]:
        with self.blobs.open(digest) as f:
            while chunk := f.read(1 << 20):
                yield chunk


class BareRuntime(OciRuntime):
    """The agent's runtime wrapper, but one ``crun run -d`` per start (the floor)."""

    def run_detached(self, cid: str, bundle: str, rootfs: Rootfs, log: str) -> None:
        extra = {"SDNCTL_ROOTFS_KIND": rootfs.kind, "SDNCTL_ROOTFS_OPTS": rootfs.options(),
                 "SDNCTL_ROOTFS": os.path.join(bundle, "rootfs")}
        with open(log, "ab") as out:
            done = self._call("run", ["run", "-d", "--pid-file",
                                      os.path.join(bundle, "pid"), "--bundle", bundle, cid],
                              extra, output=out.fileno())
        if done.returncode != 0:
            with open(log, "rb") as f:
                tail = f.read()[-300:].decode(errors="replace")
            raise BenchError(f"crun run {cid}: exit {done.returncode}: {tail}")


class CrunSide:
    def __init__(self, prefix: str, workdir: str) -> None:
        self.prefix, self.workdir = prefix, workdir
        self.root = os.path.join(workdir, "crun")
        self.host_ns = netns_path(f"{prefix}cr")
        self.cgroup_parent = f"/{prefix}-crun"
        self.log = os.path.join(self.root, "containers.log")
        self.seq = 0
        self.started: list[str] = []
        self.donor_pid = 0
        self.first_start = float("nan")

    def setup(self, archive: str) -> None:
        create_netns(self.host_ns)
        self.runtime = BareRuntime("/usr/bin/crun", os.path.join(self.root, "state"))
        fetcher = ArchiveFetcher(archive, os.path.join(self.root, "blobs"))
        self.store = ImageStore(os.path.join(self.root, "store"), fetcher)
        self.image = self.store.ensure(next(iter(fetcher.images)))
        self.start(None, DONOR)
        self.donor_pid = self._pid(DONOR)

    def _pid(self, cid: str) -> int:
        with open(os.path.join(self.root, "bundles", cid, "pid")) as f:
            return int(f.read().strip())

    def _net(self, mode: str | None) -> str | None:
        if mode == "host":
            return self.host_ns
        if mode == "container":
            return f"/proc/{self.donor_pid}/ns/net"
        return None  # a new namespace (see _config)

    def _config(self, cid: str, net: str | None) -> dict[str, Any]:
        """config.json as the agent writes it (agent.reconcile Reconciler._start)."""
        config = self.image.config
        spec = ocispec.SpecInput(
            args=(*config.entrypoint, *COMMAND), hostname=cid,
            env=(*config.env, f"HOSTNAME={cid}"), cwd=config.workdir or "/", net=net,
            caps=DEFAULT_CAPABILITIES, cgroups_path=f"{self.cgroup_parent}/{cid}")
        doc = ocispec.build(spec)
        if net is None:  # bridge/none: a network namespace of the container's own
            doc["linux"]["namespaces"].append({"type": "network"})
        return doc

    def start(self, mode: str | None, cid: str = "") -> float:
        if not cid:
            self.seq += 1
            cid = f"{self.prefix}c{self.seq}"
        bundle = os.path.join(self.root, "bundles", cid)
        os.makedirs(os.path.join(bundle, "rootfs"))
        upper, work = self.store.prepare(cid, self.image.id)
        rootfs = Rootfs("overlay", tuple(reversed(self.image.layers)), upper, work)
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(self._config(cid, self._net(mode)), f)
        self.started.append(cid)
        with Timer() as t:
            self.runtime.run_detached(cid, bundle, rootfs, self.log)
        self.last = cid
        return t.ms

    def delete(self, cid: str) -> float:
        pid = self._pid(cid)
        with Timer() as t:
            self.runtime.delete(cid)
        _reap(pid)
        shutil.rmtree(os.path.join(self.root, "bundles", cid), ignore_errors=True)
        self.store.remove_container(cid)
        cgroups.remove(f"{self.cgroup_parent}/{cid}", keep_parents_of=self.cgroup_parent)
        self.started.remove(cid)
        return t.ms

    def sample(self, mode: str, deletes: list[float]) -> float:
        started = self.start(mode)
        deletes.append(self.delete(self.last))
        return started

    def close(self) -> None:
        for cid in list(self.started):
            with contextlib.suppress(Exception):
                self.delete(cid)
        with contextlib.suppress(OSError):
            cgroups.remove_tree(self.cgroup_parent)
        remove_netns(self.host_ns)


def _reap(pid: int) -> None:
    """Reap a container process that was our child (we are a subreaper), if it was."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


# --- docker -------------------------------------------------------------------------------------

#: Runs as dockerd's parent in its private mount namespace (already in its network namespace).
DOCKERD_SH = r"""
set -e
D="$1"; shift
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
for c in $CGROUP_V1; do
  dir="/sys/fs/cgroup/${c#name=}"
  mkdir -p "$dir"
  case "$c" in
    name=*) mount -t cgroup -o "none,$c" cgroup "$dir" ;;
    *) mount -t cgroup -o "$c" cgroup "$dir" ;;
  esac
done
for dir in /etc /run /opt; do
  name=$(basename "$dir")
  mkdir -p "$D/ov/$name/upper" "$D/ov/$name/work"
  mount -t overlay overlay \
    -o "lowerdir=$dir,upperdir=$D/ov/$name/upper,workdir=$D/ov/$name/work" "$dir"
done
exec "$@"
"""


def _cgroup_v1() -> list[str]:
    """The v1 hierarchies mounted here, as mount options name them (``cpu``, ``name=systemd``)."""
    names = []
    with open("/proc/self/mounts") as f:
        for line in f:
            _, where, kind, options = line.split()[:4]
            if kind == "cgroup" and where.startswith("/sys/fs/cgroup/"):
                opts = [o for o in options.split(",") if o not in ("rw", "ro", "relatime",
                                                                   "nosuid", "nodev", "noexec")]
                if len(opts) == 1 and os.path.basename(where) in (opts[0],
                                                                  opts[0].removeprefix("name=")):
                    names.append(opts[0])
    return names


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
                                         env={**self.env, "CGROUP_V1": " ".join(_cgroup_v1())})
        self.pid = self.proc.pid  # unshare, nsenter and sh exec: this is dockerd's PID
        with contextlib.suppress(OSError):
            self.mnt_ns = os.stat(f"/proc/{self.pid}/ns/mnt").st_ino
        _wait(self._ready, "dockerd to answer", timeout=60, step=0.1)
        self.mnt_ns = os.stat(f"/proc/{self.pid}/ns/mnt").st_ino
        out = self.docker("load", "-i", archive)
        if DEFAULT_TAG.split(":")[0] not in out:
            raise BenchError(f"docker load did not load {DEFAULT_TAG}: {out}")
        self.first_start = self._timed_run("bridge", DONOR)[0]

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
        return _run([DOCKER, *args], env=self.env)

    def _timed_run(self, mode: str, name: str = "") -> tuple[float, str]:
        network = f"container:{DONOR}" if mode == "container" else mode
        argv = [DOCKER, "run", "-d", "--network", network, *(["--name", name] if name else []),
                DEFAULT_TAG, *COMMAND]
        with Timer() as t:
            cid = _run(argv, env=self.env).strip()
        return t.ms, cid

    def sample(self, mode: str, deletes: list[float]) -> float:
        started, cid = self._timed_run(mode)
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
        for pid in _pids_in_mount_ns(self.mnt_ns):
            with contextlib.suppress(lab.LabError, ValueError):
                lab.stop_process(pid, grace=2)
        with contextlib.suppress(OSError):
            cgroups.remove_tree(self.cgroup_parent)
        remove_netns(self.ns)
        shutil.rmtree(self.dir, ignore_errors=True)


def _pids_in_mount_ns(inode: int) -> list[int]:
    if not inode:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/mnt").st_ino == inode:
                    found.append(int(entry))
    return found


# --- report ------------------------------------------------------------------------------------


def _top(stats: pstats.Stats, sort: str, n: int, *restrict: str) -> list[str]:
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats(sort).print_stats(*restrict, n)
    lines = out.getvalue().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip().startswith("ncalls")), 0)
    return [ln.rstrip() for ln in lines[start:start + n + 1] if ln.strip()]


def report(samples: dict[str, dict[str, list[float]]], deletes: dict[str, dict[str, list[float]]],
           firsts: dict[str, float], docker_error: str,
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
        if "docker" in got:
            r = ratio(got["docker"], sd)
            comps.append(comparison(f"docker/sdnctl start {mode}", r, f">= {TARGET_DOCKER:g}",
                                    r >= TARGET_DOCKER))
        else:
            comps.append(comparison(f"docker/sdnctl start {mode}", float("nan"),
                                    f">= {TARGET_DOCKER:g} (docker unavailable: "
                                    f"{docker_error})", None))
        r = ratio(sd, got["crun"])
        comps.append(comparison(f"sdnctl/crun start {mode}", r, f"<= {TARGET_CRUN:g}",
                                r <= TARGET_CRUN))
        if "docker" in got:  # the reference: how far the floor itself is from docker
            comps.append(comparison(f"docker/crun start {mode}", ratio(got["docker"],
                                                                     got["crun"]), "", None))
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


def become_subreaper() -> None:
    """Bare crun's container processes (orphaned when ``crun run -d`` exits) become our
    children, so that we reap them when they are deleted."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _sampler(side: Any, mode: str, deletes: list[float]) -> Callable[[], float]:
    return lambda: float(side.sample(mode, deletes))


def main() -> int:
    args = bench_args(__doc__.splitlines()[0])
    n = int(os.environ.get("START_N", 10 if args.quick else 50))
    profile = os.environ.get("START_PROFILE", "") not in ("", "0")
    prefix = unique_prefix("st")
    workdir = tempfile.mkdtemp(prefix=f"{prefix}-", dir="/run")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    become_subreaper()
    sides: dict[str, Any] = {}
    notes: list[str] = []
    docker_error = ""
    try:
        archive = os.path.join(workdir, "image.tar")
        build_test_image(archive)
        sides["sdnctl"] = SdnctlSide(prefix, workdir, profile)
        sides["sdnctl"].setup(archive)
        sides["crun"] = CrunSide(prefix, workdir)
        sides["crun"].setup(archive)
        sides["docker"] = DockerSide(prefix, workdir)
        try:
            sides["docker"].setup(archive)
        except (BenchError, OSError, subprocess.SubprocessError) as e:
            with contextlib.suppress(Exception):
                sides.pop("docker").close()
            docker_error = str(e).splitlines()[0][:200]
            print(f"docker unavailable: {docker_error}", file=sys.stderr)
            notes.append(f"docker unavailable: {docker_error}")
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
        ms, comps = report(samples, deletes, firsts, docker_error, parts)
        print_summary(samples, comps, firsts, parts, deletes)
        notes.append(f"{n} starts per side and mode, sides alternating; sdnctl: CreateContainer "
                     "until the controller recorded the agent's 'running'; docker: `docker run "
                     "-d` wall time; crun: one `crun run -d` through the agent's runtime wrapper")
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
    sys.exit(main())
