"""What several benchmarks share: sdnctl's real stack in a lab, and bare crun.

Design note. ``SdnctlLab`` runs sdnctl as `sdnctl up` does: lab hosts (network namespaces on an
underlay of their own), the controller in this process (SQLite store, unix socket in a temp dir)
and the real agent as a process in each lab host. Because the controller is in this process,
``Reports`` wraps ``State.report_status`` and knows the exact moment the controller *records* an
agent's report (a container running, a revision realised): nothing polls. The CLI (`sdnctl`,
a process of its own) talks to the same controller (``cli_env``).

``BareCrun`` is the floor of a container start: the layers of a docker-save archive unpacked by
the agent's ``ImageStore``, config.json as the agent builds it (``agent.ocispec``), and the
agent's own runtime call (``OciRuntime.run``: one ``crun run -d`` from a private mount namespace
where the overlay is mounted), without the agent around it.

The file name starts with ``_``: the Makefile runs every other ``bench/*.py`` as a benchmark.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import grpc
from harness import Timer

from agent import ocispec
from agent.imagestore import ImageStore
from agent.kernel import cgroups, procs
from agent.kernel.errors import KernelError
from agent.kernel.netns import remove_netns
from agent.layout import SANDBOX_DIRS, default_cgroup_parent
from agent.runtime import OciRuntime, Rootfs
from sdnctl.api.imagefmt import BlobStore, import_archive
from sdnctl.api.model import DEFAULT_CAPABILITIES, ContainerStatus
from sdnctl.controller.server import create_server
from sdnctl.controller.state import State
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.lab import lab
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

TIMEOUT = 30.0
PASS_RE = re.compile(r"revision (\d+): \d+ action\(s\) in (\d+) ms")
PR_SET_CHILD_SUBREAPER = 36
#: What every image container runs: busybox sh (PID 1) waiting on a sleep, and leaving on
#: SIGTERM. PID 1 ignores signals it has no handler for: a bare `sleep` would make a graceful
#: stop (sdnctl's delete: SIGTERM, grace, SIGKILL) wait out the grace period.
COMMAND = ("sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait")


class BenchError(RuntimeError):
    pass


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise BenchError(f"could not run {' '.join(argv[:6])}: "
                         f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc.stdout


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT,
             step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(step)


def become_subreaper() -> None:
    """Bare crun's container processes (orphaned when ``crun run -d`` exits) become our
    children, so that we reap them when they are deleted."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def chunks(archive: str) -> Iterator[pb.ImageChunk]:
    with open(archive, "rb") as f:
        while chunk := f.read(1 << 20):
            yield pb.ImageChunk(data=chunk)


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


class SdnctlLab:
    """Lab hosts, the controller in this process, the real agent in each host (`sdnctl up`)."""

    def __init__(self, prefix: str, workdir: str, hosts: Sequence[str] = ("h0",),
                 profile: bool = False) -> None:
        self.prefix, self.workdir, self.profile = prefix, workdir, profile
        self.host_names = list(hosts)
        self.reports = Reports()
        self.lab = lab.Lab(f"{prefix}l")  # not a prefix of our other namespaces' names
        self.hosts: dict[str, lab.LabHost] = {}
        self.server: Any = None
        self.store: SqliteStore | None = None
        self.channel: grpc.Channel | None = None
        self.agents: dict[str, tuple[int, int | None]] = {}  # host -> (pid, start time)
        self.socket = os.path.join(workdir, "controller.sock")

    def run_dir(self, host: str) -> str:
        return os.path.join(self.workdir, f"agent-{host}")

    def agent_log(self, host: str) -> str:
        return os.path.join(self.workdir, f"agent-{host}.log")

    def profile_path(self, host: str) -> str:
        return os.path.join(self.workdir, f"agent-{host}.prof") if self.profile else ""

    def container_netns(self, host: str, name: str) -> str:
        """Where the agent pins a bridged container's network namespace."""
        return os.path.join(self.run_dir(host), SANDBOX_DIRS["net"], name)

    def setup(self) -> None:
        """Build everything (``close`` undoes whatever of it was built)."""
        self.reports.install()
        self.lab.ensure_underlay()
        self.store = SqliteStore(os.path.join(self.workdir, "controller.db"))
        self.server = create_server(f"unix:{self.socket}", self.store, sweep_interval=0)
        self.channel = grpc.insecure_channel(self.server.address)
        self.api = pb_grpc.ControllerStub(self.channel)
        for i, name in enumerate(self.host_names):
            host = self.lab.ensure_host(name, i)
            self.hosts[name] = host
            self.api.CreateHost(pb.CreateHostRequest(host=pb.Host(
                name=name, underlay_ip=host.underlay_ip, lab=True)), timeout=10)
            os.makedirs(self.run_dir(name))
            python = [sys.executable, *(["-m", "cProfile", "-o", self.profile_path(name)]
                                        if self.profile else [])]
            argv = [*python, "-m", "agent.main", "--host", name, "--controller",
                    self.server.address, "--underlay-ip", host.underlay_ip, "--underlay-dev",
                    host.underlay_dev, "--netns", host.netns, "--run-dir", self.run_dir(name),
                    "--store-dir", os.path.join(self.run_dir(name), "store")]
            pid = lab.spawn_in_netns(host.netns, argv, self.agent_log(name))
            self.agents[name] = (pid, lab.process_start_time(pid))
        for name in self.host_names:
            wait_for(lambda name=name: self._agent_connected(name),  # type: ignore[misc]
                     f"the agent of {name} to connect")

    def _agent_connected(self, name: str) -> bool:
        got = self.api.GetHost(pb.GetRequest(name=name), timeout=10)
        return bool(got.agent_connected and got.agent_pid == self.agents[name][0])

    def load_image(self, archive: str) -> str:
        reply = self.api.LoadImage(chunks(archive), timeout=120)
        return str(reply.images[0].id)

    def create_network(self, network: pb.Network) -> None:
        self.api.CreateNetwork(pb.CreateNetworkRequest(network=network), timeout=10)

    def start(self, ctr: pb.Container) -> tuple[int, float, float]:
        """CreateContainer until the controller records it running: (revision, RPC ms, ms)."""
        t0 = time.perf_counter()
        reply = self.api.CreateContainer(pb.CreateContainerRequest(container=ctr),
                                         timeout=TIMEOUT)
        t_reply = time.perf_counter()
        total = (self.reports.wait_running(ctr.name) - t0) * 1000
        return reply.revision, (t_reply - t0) * 1000, total

    def delete(self, name: str) -> float:
        """DeleteContainer until the agent reports the delete's revision realised (ms)."""
        t0 = time.perf_counter()
        reply = self.api.DeleteContainer(pb.DeleteRequest(name=name), timeout=TIMEOUT)
        return (self.reports.wait_revision(reply.revision) - t0) * 1000

    def cli(self) -> str:
        """The `sdnctl` command of this interpreter's environment."""
        path = os.path.join(os.path.dirname(sys.executable), "sdnctl")
        if not os.access(path, os.X_OK):
            raise BenchError(f"{path} missing (scripts/setup.sh installs the CLI)")
        return path

    def cli_env(self) -> dict[str, str]:
        """The environment of a user's `sdnctl` aimed at this controller."""
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "SDNCTL_CONTROLLER": f"unix:{self.socket}",
                "SDNCTL_RUN_DIR": os.path.join(self.workdir, "cli-run"),
                "SDNCTL_STATE_DIR": os.path.join(self.workdir, "cli-state")}

    def pass_times(self, host: str) -> dict[int, float]:
        """The agent's reconciliation passes, from its log: revision -> ms."""
        passes: dict[int, float] = {}
        with open(self.agent_log(host)) as f:
            for line in f:
                found = PASS_RE.search(line)
                if found:
                    passes[int(found[1])] = float(found[2])
        return passes

    def stop_agents(self, delete: Iterable[str] = ()) -> list[str]:
        errors: list[str] = []
        for name in delete:
            with contextlib.suppress(grpc.RpcError, BenchError):
                self.delete(name)
        for host, (pid, start_time) in list(self.agents.items()):
            try:
                lab.stop_process(pid, grace=10, start_time=start_time)
            except lab.LabError as e:
                errors.append(str(e))
            del self.agents[host]
            _sweep_agent(self.run_dir(host))
        return errors

    def close(self, delete: Iterable[str] = ()) -> None:
        """Delete ``delete`` (containers), stop the agents, sweep, stop the controller, tear
        the lab down."""
        errors = self.stop_agents(delete)
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
            print(f"sdnctl lab cleanup: {errors}", file=sys.stderr)


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


class BareCrun:
    """Containers of one image started by one ``crun run -d`` each (the floor)."""

    def __init__(self, prefix: str, workdir: str) -> None:
        self.prefix = prefix
        self.root = os.path.join(workdir, "crun")
        self.cgroup_parent = f"/{prefix}-crun"
        self.log = os.path.join(self.root, "containers.log")
        self.seq = 0
        self.started: list[str] = []
        self.pids: dict[str, int] = {}

    def setup(self, archive: str) -> None:
        if not os.access("/usr/bin/crun", os.X_OK):
            raise BenchError("/usr/bin/crun missing (bench/setup.sh installs crun)")
        self.runtime = OciRuntime("/usr/bin/crun", os.path.join(self.root, "state"))
        fetcher = ArchiveFetcher(archive, os.path.join(self.root, "blobs"))
        self.store = ImageStore(os.path.join(self.root, "store"), fetcher)
        self.image = self.store.ensure(next(iter(fetcher.images)))

    def pid(self, cid: str) -> int:
        return self.pids[cid]

    def _config(self, cid: str, net: str | None) -> dict[str, Any]:
        """config.json as the agent writes it (agent.containers Containers._start)."""
        config = self.image.config
        spec = ocispec.SpecInput(
            args=(*config.entrypoint, *COMMAND), hostname=cid,
            env=(*config.env, f"HOSTNAME={cid}"), cwd=config.workdir or "/", net=net,
            caps=DEFAULT_CAPABILITIES, cgroups_path=f"{self.cgroup_parent}/{cid}")
        doc = ocispec.build(spec)
        if net is None:  # a network namespace of the container's own (lo only)
            doc["linux"]["namespaces"].append({"type": "network"})
        return doc

    def start(self, net: str | None, cid: str = "") -> tuple[str, float]:
        """One container joining the network namespace at ``net`` (None: a new one with only
        lo); returns its id and the ms of ``crun run -d``."""
        if not cid:
            self.seq += 1
            cid = f"{self.prefix}c{self.seq}"
        bundle = os.path.join(self.root, "bundles", cid)
        os.makedirs(os.path.join(bundle, "rootfs"))
        upper, work = self.store.prepare(cid, self.image.id)
        rootfs = Rootfs("overlay", tuple(reversed(self.image.layers)), upper, work)
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(self._config(cid, net), f)
        self.started.append(cid)
        try:
            with Timer() as t:
                self.pids[cid], _ = self.runtime.run(cid, bundle, rootfs, self.log)
        except KernelError as e:
            raise BenchError(str(e)) from e
        return cid, t.ms

    def delete(self, cid: str) -> float:
        """``crun delete --force`` (ms), then its files and cgroup (untimed)."""
        pid = self.pids.pop(cid, None)  # (none: its start failed)
        with Timer() as t:
            self.runtime.delete(cid)
        if pid is not None:
            _reap(pid)
        shutil.rmtree(os.path.join(self.root, "bundles", cid), ignore_errors=True)
        self.store.remove_container(cid)
        cgroups.remove(f"{self.cgroup_parent}/{cid}", keep_parents_of=self.cgroup_parent)
        self.started.remove(cid)
        return t.ms

    def close(self) -> None:
        for cid in list(self.started):
            with contextlib.suppress(Exception):
                self.delete(cid)
        with contextlib.suppress(OSError):
            cgroups.remove_tree(self.cgroup_parent)


def _reap(pid: int) -> None:
    """Reap a container process that was our child (we are a subreaper), if it was."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
