"""The containers of one host: their sandboxes, processes and files, observed and changed.

The reconciler (agent.reconcile) plans a pass and hands this module the container actions:
``setup_all`` builds containers' sandboxes and veths on the reconciler's thread and starts their
processes in helper threads (``PARALLEL_STARTS`` at once by default), each container in an
ExitStack (if a later step fails, what its setup created is undone and the next pass starts
clean); ``remove`` keeps going past failures and reports them all; ``observe`` reads back every
container this host has a trace of, and ``statuses`` turns that into the reports the controller
gets.

Files in the agent's run directory (``/run/sdnctl/<host>`` by default; agent.layout):
    netns/<container>            the container's network namespace (a bind mount)
    uts/<container>, ipc/<container>   its UTS and IPC namespaces (its "sandbox" with netns/)
    containers/<container>.pid   PID and start time of its process
    containers/<container>.exit  "PID STARTTIME CODE": how that process ended, when we saw it
    containers/<container>.spec  the spec hash it was started with
    containers/<container>.log   its stdout and stderr
    bundles/<container>/         its OCI bundle (config.json, rootfs mount point)
    runtime/                     the OCI runtime's state directory

Containers run under an OCI runtime (agent.runtime) with a root filesystem from the host's image
store (agent.imagestore): the agent is their parent's parent and a child subreaper, so it reaps
each exited container process itself and keeps its exit code. CNI attachments (issue 17) are
containers without a process: the runtime that called the plugin owns their namespace.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence

from agent import dns, layout, ocispec
from agent import plan as p
from agent.desired import DesiredContainer, DesiredNetwork, DesiredState
from agent.imagestore import ImageStore
from agent.kernel import cgroups, conntrack, netns, procs, sysctl
from agent.kernel.links import ObservedContainerNet
from agent.kernel.seams import CgroupOps, ConntrackOps, LinkOps, ProcessOps, SandboxOps
from agent.layout import default_cgroup_parent
from agent.modes import MODES
from agent.names import bridge_name, veth_alias, veth_name
from agent.runtime import OciRuntime, Rootfs, Runtime
from sdnctl.api import faults
from sdnctl.api.fields import parse_volume
from sdnctl.api.model import (
    DEFAULT_CAPABILITIES,
    MODE_BRIDGE,
    MODE_CONTAINER,
    MODE_HOST,
    STATE_CREATED,
    STATE_ERROR,
    STATE_EXITED,
    STATE_PENDING,
    STATE_RESTARTING,
    STATE_RUNNING,
    ContainerStatus,
)

log = logging.getLogger("sdnctl.agent")

#: How many container starts of one pass run at once (``Containers.setup_all``), by default
#: (``--parallel-starts``; the lab gives agents that share a machine fewer).
PARALLEL_STARTS = 4


class Containers:
    """The container side of a pass. Use it from the reconciler's thread only (its netlink
    sockets, through ``links``, are per thread). ``sandboxes``, ``processes``, ``cgroups``
    and ``conntrack`` are the kernel seams it goes through (agent.kernel.seams; the real
    modules by default).

    ``host_netns`` is the path reported for containers in the host's network namespace (open
    mode); the agent's own namespace is the host's.
    """

    def __init__(self, run_dir: str, links: LinkOps, stop_grace: float = 1.0,
                 host_netns: str = "", runtime: Runtime | None = None,
                 images: ImageStore | None = None, cgroup_parent: str = "",
                 userns_supported: bool | None = None, sandboxes: SandboxOps = netns,
                 processes: ProcessOps = procs, cgroups: CgroupOps = cgroups,
                 conntrack: ConntrackOps = conntrack,
                 parallel_starts: int = PARALLEL_STARTS) -> None:
        self.run_dir = run_dir
        self.parallel_starts = max(1, parallel_starts)
        self.links = links
        self.sandboxes = sandboxes
        self.processes = processes
        self.cgroups = cgroups
        self.conntrack = conntrack
        self._held: list[str] | None = None  # addresses to flush (``hold_flushes``)
        self.stop_grace = stop_grace
        self.host_netns = host_netns or f"/proc/{os.getpid()}/ns/net"
        # Containers get user namespaces by default where the host has them (user_ns "auto").
        self.userns_supported = (sysctl.user_namespaces() if userns_supported is None
                                 else userns_supported)
        self.ctr_dir = layout.containers_dir(run_dir)
        self.bundle_dir = layout.bundles_dir(run_dir)
        self.runtime = runtime or OciRuntime("crun", os.path.join(run_dir, "runtime"))
        self.images = images or ImageStore(os.path.join(run_dir, "store"))
        self.cgroup_parent = cgroup_parent or default_cgroup_parent(run_dir)
        self.restarts: dict[str, int] = {}
        os.makedirs(self.bundle_dir, mode=0o700, exist_ok=True)
        for kind in netns.SANDBOX_KINDS:
            os.makedirs(layout.sandbox_dir(run_dir, kind), mode=0o755, exist_ok=True)
        os.makedirs(self.ctr_dir, mode=0o755, exist_ok=True)

    # -- paths --------------------------------------------------------------------------------

    def sandbox(self, name: str) -> dict[str, str]:
        """Paths of a container's pinned namespaces: ``net``, ``uts``, ``ipc``."""
        return {kind: os.path.join(layout.sandbox_dir(self.run_dir, kind), name)
                for kind in netns.SANDBOX_KINDS}

    def netns_path(self, name: str) -> str:
        return self.sandbox(name)["net"]

    def process_netns(self, ctr: DesiredContainer | None, name: str) -> str:
        """The network namespace a container's process runs in (for liveness and status)."""
        if ctr is None:
            return self.netns_path(name)
        return MODES[ctr.mode].namespaces(ctr, self.sandbox).net or "/proc/self/ns/net"

    def process_namespaces(self, ctr: DesiredContainer | None, name: str) -> dict[str, str]:
        """Every namespace a container's process must be in to be running, kind -> path: its
        network namespace, and the UTS and IPC namespaces it joins (its sandbox's or a donor's)."""
        found = {"net": self.process_netns(ctr, name)}
        if ctr is not None:
            where = MODES[ctr.mode].namespaces(ctr, self.sandbox)
            found.update({kind: path for kind, path in (("uts", where.uts), ("ipc", where.ipc))
                          if path is not None})
        return found

    def _file(self, name: str, suffix: str) -> str:
        return layout.container_file(self.run_dir, name, suffix)

    # -- observe ------------------------------------------------------------------------------

    def observe(self, desired: DesiredState) -> dict[str, p.ContainerState]:
        """Every container this host has a trace of: sandbox, pidfile, bundle or writable layer."""
        self.runtime.reap_strays()
        self.runtime.refresh()
        names: set[str] = set()
        for kind in netns.SANDBOX_KINDS:
            names |= set(os.listdir(layout.sandbox_dir(self.run_dir, kind)))
        names |= {f.rsplit(".", 1)[0] for f in os.listdir(self.ctr_dir) if f.endswith(".pid")}
        names |= set(os.listdir(self.bundle_dir)) | set(self.images.containers())
        wanted = {name: desired.containers.get(name) for name in names
                  if not name.startswith(".")}
        # CNI attachments leave no trace here: the runtime owns their namespace (issue 17).
        attached = {name: ctr for name, ctr in desired.containers.items()
                    if ctr.cni_netns and not ctr.cni_docker}
        # Every container's network side in one batch (one thread opens all the sockets).
        peers = {self.netns_path(name): want.interface if want else "eth0"
                 for name, want in wanted.items() if want is None or want.mode == MODE_BRIDGE}
        peers |= {ctr.cni_netns: ctr.interface for ctr in attached.values()}
        nets = self.links.observe_containers(peers) if peers else {}
        found = {name: self._observe_container(name, want, nets.get(self.netns_path(name)))
                 for name, want in wanted.items() if name not in attached}
        for name, ctr in attached.items():
            found[name] = p.ContainerState(netns=self.sandboxes.is_netns(ctr.cni_netns),
                                           net=nets.get(ctr.cni_netns), started=False,
                                           running=False, spec="")
        return found

    def _observe_container(self, name: str, want: DesiredContainer | None,
                           net: ObservedContainerNet | None) -> p.ContainerState:
        paths = self.sandbox(name)
        has_sandbox = all(self.sandboxes.is_netns(path) for path in paths.values())
        pidfile = self._file(name, "pid")
        info = procs.read_pidfile(pidfile)
        running = False
        exit_code = None
        if info is not None:
            if want is None and not os.path.exists(self.netns_path(name)):
                # To be removed, not reported, and with no sandbox of its own (it joined
                # another's): whether it runs decides only that its removal stops it first.
                running = self.processes.is_running(info.pid, info.start_time)
            else:
                # Running (and its PID reported) only when it is in all of its namespaces: a
                # process whose donor's namespace is gone, or that is not in it yet, is not.
                running = self.processes.is_alive(info, self.process_namespaces(want, name))
            if not running:
                exit_code = self._exit_code(name, info)
        return p.ContainerState(netns=has_sandbox, net=net, started=info is not None,
                                running=running, spec=self._read(self._file(name, "spec")),
                                pid=info.pid if running and info is not None else 0,
                                started_at=_mtime(pidfile), exit_code=exit_code)

    def _exit_code(self, name: str, info: procs.ProcInfo) -> int | None:
        """How the process of ``info`` ended: reaped now, or as recorded when it was."""
        path = self._file(name, "exit")
        code = self.processes.reap(info)
        if code is not None:
            procs.write_atomic(path, f"{info.pid} {info.start_time} {code}\n")
            return code
        recorded = self._read(path).split()
        if len(recorded) == 3 and recorded[:2] == [str(info.pid), str(info.start_time)]:
            return int(recorded[2])
        return None

    @staticmethod
    def _read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    # -- change -------------------------------------------------------------------------------

    def stop_first(self, actions: list[p.Action]) -> None:
        """Stop every process this pass replaces or removes together: one grace period."""
        names = [a.container.name for a in actions
                 if isinstance(a, p.SetupContainer) and a.stop_first]
        names += [a.name for a in actions if isinstance(a, p.RemoveContainer) and a.stop]
        infos = [info for info in (procs.read_pidfile(self._file(n, "pid")) for n in names)
                 if info is not None]
        try:
            self.processes.stop_all(infos, self.stop_grace)
        except Exception as e:  # each action's own stop retries and reports it
            log.warning("could not stop processes: %s", e)


    def setup(self, action: p.SetupContainer) -> None:
        """Set one container up (``setup_all`` of one): raises what failed, all of it undone."""
        failed = self.setup_all([action])
        if failed:
            raise failed[action.container.name]

    def setup_all(self, actions: Sequence[p.SetupContainer]) -> dict[str, Exception]:
        """Set containers up, each as a whole: its sandbox and veth made on this thread, one
        container after another (netlink sockets are per thread), and its start handed to a
        helper thread as soon as they are made (up to ``parallel_starts`` at once; a
        joined container's once its donor's has ended: it binds the donor's /etc files). A
        container whose step fails is undone whole, on this thread (what its setup created
        goes and the next pass starts clean); the others go on. The errors, by name.

        A start is mostly the runtime's own process (``crun run --detach``: about 10 ms, its
        loader, namespaces, mounts and cgroup), which runs outside our interpreter, and so
        does most of a sandbox's and veth's making (the kernel's): `up` of 50 containers on
        one host did the one after the other, container after container (issue 21)."""
        failed: dict[str, Exception] = {}
        undos: dict[str, contextlib.ExitStack] = {}

        def ended(action: p.SetupContainer, error: Exception | None) -> None:
            undo = undos[action.container.name]
            if error is None:
                self._ready(action.container, undo)
            else:
                failed[action.container.name] = self._undo(undo, error)

        with concurrent.futures.ThreadPoolExecutor(self.parallel_starts, "start") as pool:
            starts = _Starts(pool, self._start)
            for action in actions:
                undo = undos[action.container.name] = contextlib.ExitStack()
                try:
                    self._prepare(action, undo)
                except Exception as e:
                    failed[action.container.name] = self._undo(undo, e)
                    continue
                except BaseException:
                    undo.close()
                    raise
                if action.start:
                    starts.add(action, undo)
                else:
                    self._ready(action.container, undo)
                for done in starts.ended(wait=False):
                    ended(*done)
            for done in starts.ended(wait=True):
                ended(*done)
        return failed

    def _prepare(self, action: p.SetupContainer, undo: contextlib.ExitStack) -> None:
        """A setup's steps before the start, on the reconciler's thread; undone by ``undo``."""
        ctr, net = action.container, action.network
        paths = self.sandbox(ctr.name)
        if action.stop_first and action.start:
            self._stop(ctr.name)
        if action.drop_sandbox:
            self._drop_sandbox(ctr.name)
        if action.netns and self.sandboxes.create_sandbox(paths, ctr.name):
            undo.callback(self._drop_sandbox, ctr.name)
            faults.point("namespace")
        if action.attach and net is not None and ctr.cni_docker:
            self.links.repair_host_side(veth_name(ctr.name, ctr.interface),
                                        veth_alias(ctr.name, ctr.interface),
                                        bridge_name(net.name), net.mtu)
        elif action.attach and net is not None:
            if ctr.cni_netns:  # no sandbox of ours takes a half-made veth along: undo it
                undo.callback(self.links.remove_link, veth_name(ctr.name, ctr.interface))
            # Added in two batches of raw requests (a pair that exists: verified and
            # repaired, ``ensure_veth``): pyroute2's requests for a new pair took about
            # 7 ms of the agent's interpreter per container, half of its whole start.
            self.links.add_veth(
                veth_name(ctr.name, ctr.interface), veth_alias(ctr.name, ctr.interface),
                bridge_name(net.name), net.mtu, ctr.cni_netns or paths["net"],
                ctr.interface, ctr.address_cidr, ctr.gateway, ctr.mac,
                address6_cidr=ctr.address6_cidr, gateway6=ctr.gateway6)
        self._forget(action.stale_addresses)
        if action.stop_first and not action.start:
            self._stop(ctr.name)  # stopped on request: keep its sandbox and its writes
        if action.start and not action.stop_first and \
                os.path.exists(self._file(ctr.name, "pid")):
            self.restarts[ctr.name] = self.restarts.get(ctr.name, 0) + 1

    @staticmethod
    def _undo(undo: contextlib.ExitStack, error: Exception) -> Exception:
        """Roll a failed setup back; ``error``, what failed (an error of the rollback itself
        is logged: the next pass finds what it left)."""
        try:
            undo.close()
        except Exception as e:
            log.warning("could not undo all of a failed setup: %s", e, exc_info=True)
        return error

    @staticmethod
    def _ready(ctr: DesiredContainer, undo: contextlib.ExitStack) -> None:
        undo.pop_all()
        log.info("container %s ready (%s%s)", ctr.name, ctr.mode,
                 f" {' '.join(ctr.address_cidrs)}" if ctr.addressed else "")

    def _start(self, ctr: DesiredContainer, undo: contextlib.ExitStack,
               net: DesiredNetwork | None = None) -> None:
        """Write the bundle and start it under the runtime; pidfile and spec hash last.

        What this start leaves behind if a later step fails is registered on ``undo``: the
        runtime's container (and its process and cgroup), the bundle, a writable layer made
        for this run. A container that ran before keeps its writable layer."""
        where = MODES[ctr.mode].namespaces(ctr, self.sandbox)
        self.runtime.delete(ctr.name)  # the record of an earlier run, if any
        bundle = os.path.join(self.bundle_dir, ctr.name)
        undo.callback(shutil.rmtree, bundle, ignore_errors=True)
        undo.callback(self.cgroups.remove, self.cgroup_path(ctr.name))
        if not os.path.exists(self.images.container_dir(ctr.name)):
            undo.callback(self.images.remove_container, ctr.name)
        os.makedirs(os.path.join(bundle, "rootfs"), mode=0o755, exist_ok=True)
        user_ns = ctr.runs_user_ns(self.userns_supported)
        if user_ns and not self.userns_supported:
            raise ValueError(f"container {ctr.name!r}: user_ns is private, but this host has no "
                             "user namespaces (user.max_user_namespaces is 0)")
        owner = ocispec.USERNS_BASE if user_ns else 0
        if ctr.image_id:
            image, upper, work = self.images.ensure_for(ctr.name, ctr.image_id, owner)
            rootfs = Rootfs("overlay", tuple(reversed(image.layers)), upper, work)
            config = image.config
            args = (*config.entrypoint, *(ctr.command or config.cmd))
            env, cwd = config.env, ctr.workdir or config.workdir or "/"
        else:
            rootfs = Rootfs("host")
            args, env, cwd = ctr.command, (ocispec.DEFAULT_PATH,), ctr.workdir or "/"
        if not args:
            raise ValueError(f"container {ctr.name!r}: no command, and its image has none")
        volumes = tuple((v, self.images.volume_source(v, owner)) for v in
                        (parse_volume(spec, "volumes") for spec in ctr.volumes))
        etc_files = self._etc_files(ctr, net)
        if ctr.mode not in (MODE_CONTAINER, MODE_HOST):  # written for this container: undo
            undo.callback(self._unlink, ctr.name, ("resolv.conf", "hosts"))
        spec = ocispec.SpecInput(
            args=tuple(args), hostname=ctr.name,
            env=(*env, *ctr.env, f"HOSTNAME={ctr.name}"), cwd=cwd,
            net=where.net, uts=where.uts, ipc=where.ipc, user_ns=user_ns,
            readonly_root=not ctr.image_id, caps=(*DEFAULT_CAPABILITIES, *ctr.cap_add),
            limits=ocispec.Limits(ctr.memory, ctr.cpus, ctr.cpu_shares, ctr.pids_limit),
            cgroups_path=self.cgroup_path(ctr.name), volumes=volumes,
            etc_files=etc_files)
        procs.write_atomic(os.path.join(bundle, "config.json"), json.dumps(ocispec.build(spec)))
        pid, started = self.runtime.run(ctr.name, bundle, rootfs, self._file(ctr.name, "log"))
        undo.callback(self._reap_failed_start, ctr.name, procs.ProcInfo(pid, started))
        faults.point("runtime")
        procs.write_pidfile(self._file(ctr.name, "pid"), procs.ProcInfo(pid, started))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._file(ctr.name, "exit"))
        procs.write_atomic(self._file(ctr.name, "spec"), ctr.spec_hash() + "\n")

    def _etc_files(self, ctr: DesiredContainer, net: DesiredNetwork | None
                   ) -> tuple[tuple[str, str], ...]:
        """The /etc/resolv.conf and /etc/hosts a container gets, written under the run
        directory (rewritten in place, so a joined container's bind mount sees its donor's new
        files): bridged ones point at their network's resolver, closed ones have none, joined
        ones share their donor's, open ones keep the host's (nothing mounted)."""
        if ctr.mode == MODE_CONTAINER:
            donor = (self._file(ctr.target, "resolv.conf"), self._file(ctr.target, "hosts"))
            if all(os.path.exists(path) for path in donor):
                return (("/etc/resolv.conf", donor[0]), ("/etc/hosts", donor[1]))
            return ()
        if ctr.mode == MODE_HOST:
            return ()
        resolv = dns.resolv_conf(net) if ctr.mode == MODE_BRIDGE and net is not None else \
            dns.CLOSED_RESOLV_CONF
        files = ((self._file(ctr.name, "resolv.conf"), resolv),
                 (self._file(ctr.name, "hosts"), dns.hosts_file(ctr.name, ctr.ip or ctr.ip6,
                                                                   ctr.aliases)))
        for path, text in files:
            dns.write_in_place(path, text)
        return (("/etc/resolv.conf", files[0][0]), ("/etc/hosts", files[1][0]))

    def _reap_failed_start(self, name: str, info: procs.ProcInfo) -> None:
        """Undo a start whose later steps failed: the process (our child) and its record."""
        self.runtime.delete(name)  # --force: kills the process
        self.processes.stop(info, self.stop_grace)
        self.processes.reap(info)

    def cgroup_path(self, name: str) -> str:
        return f"{self.cgroup_parent}/{name}"

    def hold_flushes(self) -> None:
        """Until ``release_flushes``, the addresses whose conntrack entries must go are
        gathered instead of flushed container by container. A flush dumps the kernel's whole
        conntrack table, which every namespace shares (13 ms of CPU beside a 100-host lab's
        1,100 namespaces): a pass that removed ten containers dumped it ten times."""
        self._held = []

    def release_flushes(self) -> None:
        """Flush what was gathered since ``hold_flushes``: one dump per family."""
        held, self._held = self._held, None
        if held:
            self.conntrack.flush_addresses(held)

    def _forget(self, addresses: Iterable[str]) -> None:
        """Forget the conntrack entries of addresses (CIDRs) a container no longer has: now,
        or with the rest of the pass while flushes are held."""
        ips = [cidr.split("/")[0] for cidr in addresses]
        if self._held is not None:
            self._held += ips
        elif ips:
            self.conntrack.flush_addresses(ips)

    def _stop(self, name: str) -> None:
        info = procs.read_pidfile(self._file(name, "pid"))
        if info is not None and self.processes.is_running(info.pid, info.start_time):
            self.processes.stop(info, self.stop_grace)
        if info is not None:
            self._exit_code(name, info)  # reap it, and keep its code
        self.runtime.delete(name)

    def _drop_sandbox(self, name: str) -> None:
        paths = self.sandbox(name)
        self.links.forget_netns(paths["net"])
        for path in paths.values():
            self.sandboxes.remove_netns(path)

    def remove(self, name: str, stop: bool, addresses: tuple[str, ...] = ()) -> None:
        """Stop the process, drop the sandbox (its veth pair goes with it), forget the files."""
        errors: list[Exception] = []
        steps = [lambda: self._stop(name),
                 lambda: self._drop_sandbox(name),
                 lambda: self._forget(addresses),
                 lambda: shutil.rmtree(os.path.join(self.bundle_dir, name), ignore_errors=True),
                 lambda: self.images.remove_container(name),
                 lambda: self.cgroups.remove(self.cgroup_path(name)),
                 lambda: self._remove_files(name)]
        for step in steps:
            try:
                step()
            except Exception as e:
                errors.append(e)
        if errors:
            raise ExceptionGroup(f"could not remove container {name!r} completely", errors)
        log.info("container %s removed", name)

    def _remove_files(self, name: str) -> None:
        self.restarts.pop(name, None)
        self._unlink(name, ("pid", "spec", "log", "exit", "resolv.conf", "hosts"))

    def _unlink(self, name: str, suffixes: tuple[str, ...]) -> None:
        for suffix in suffixes:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._file(name, suffix))

    # -- status -------------------------------------------------------------------------------

    def statuses(self, desired: DesiredState, observed: p.Observed,
                 errors: dict[str, str]) -> list[ContainerStatus]:
        """A report per desired container from what a pass observed and the errors it met
        (container name -> message)."""
        result = []
        for name, ctr in sorted(desired.containers.items()):
            state = observed.containers.get(name)
            if ctr.cni_docker:
                result.append(_docker_status(ctr, observed, errors.get(name, "")))
                continue
            if ctr.cni_netns:
                result.append(self._attachment_status(ctr, state, errors.get(name, "")))
                continue
            ready = state is not None and (state.netns or not MODES[ctr.mode].owns_sandbox)
            message = errors.get(name, "") or (p.blocked(ctr, desired) or "")
            if name in errors:
                phase = STATE_ERROR
            elif state is None or not ready:
                phase = STATE_PENDING
            elif state.running:
                phase = STATE_RUNNING
            elif state.started:
                phase = STATE_RESTARTING if p.wants_restart(ctr, state) else STATE_EXITED
            else:
                phase = STATE_CREATED
            where = self.process_netns(ctr, name)
            if where == "/proc/self/ns/net":
                where = self.host_netns
            exited = phase in (STATE_EXITED, STATE_RESTARTING) and state is not None
            code = state.exit_code if exited and state is not None else None
            result.append(ContainerStatus(
                name=name, state=phase, pid=state.pid if state else 0,
                netns=where if phase in (STATE_RUNNING, STATE_CREATED, STATE_EXITED,
                                         STATE_RESTARTING) else "",
                message=message, exit_code=-1 if exited and code is None else (code or 0),
                restarts=self.restarts.get(name, 0), runtime=self.runtime.name,
                runtime_root=self.runtime.root, cgroup=self.cgroup_path(name),
                user_ns=ctr.runs_user_ns(self.userns_supported)))
        return result


    @staticmethod
    def _attachment_status(ctr: DesiredContainer, state: p.ContainerState | None,
                           error: str) -> ContainerStatus:
        """A CNI attachment is running once its interface is in the runtime's namespace as
        wanted; there is no process, cgroup nor runtime state of ours."""
        attached = (state is not None and state.net is not None
                    and state.net.addresses == ctr.address_cidrs)
        if error:
            phase, message = STATE_ERROR, error
        elif state is not None and not state.netns:
            phase, message = STATE_ERROR, f"namespace {ctr.cni_netns} is gone (CNI DEL missed)"
        elif attached:
            phase, message = STATE_RUNNING, ""
        else:
            phase, message = STATE_PENDING, ""
        return ContainerStatus(name=ctr.name, state=phase, netns=ctr.cni_netns,
                               message=message, runtime="cni")

def _docker_status(ctr: DesiredContainer, observed: p.Observed, error: str) -> ContainerStatus:
    """A Docker endpoint is running once its veth's host side is in the bridge (dockerd holds
    the other side); before Join it has only its address."""
    link = observed.links.get(veth_name(ctr.name, ctr.interface))
    if error:
        phase, message = STATE_ERROR, error
    elif link is not None and link.master == bridge_name(ctr.target):
        phase, message = STATE_RUNNING, ""
    else:
        phase, message = STATE_PENDING, "address reserved; waiting for Docker's Join"
    return ContainerStatus(name=ctr.name, state=phase, message=message, runtime="docker")


class _Starts:
    """The container starts of one ``Containers.setup_all``, run by ``start`` in ``pool``'s
    threads; a joined container's is submitted once its donor's (if one of them) has ended."""

    def __init__(self, pool: concurrent.futures.Executor,
                 start: Callable[[DesiredContainer, contextlib.ExitStack,
                                  DesiredNetwork | None], None]) -> None:
        self.pool = pool
        self.start = start
        self.waiting: list[tuple[p.SetupContainer, contextlib.ExitStack]] = []
        self.running: dict[concurrent.futures.Future[None], p.SetupContainer] = {}
        self.unfinished: set[str] = set()

    def add(self, action: p.SetupContainer, undo: contextlib.ExitStack) -> None:
        """Start ``action``'s container (its ``undo`` gets what the start makes)."""
        self.unfinished.add(action.container.name)
        self.waiting.append((action, undo))
        self._submit()

    def _submit(self, anyway: bool = False) -> None:
        ready = [item for item in self.waiting if _donor(item[0].container) not in
                 self.unfinished] or (self.waiting[:1] if anyway else [])
        for item in ready:
            self.waiting.remove(item)
            action, undo = item
            self.running[self.pool.submit(self.start, action.container, undo,
                                          action.network)] = action

    def ended(self, wait: bool) -> Iterator[tuple[p.SetupContainer, Exception | None]]:
        """Each start that has ended, with its error (None: started); ``wait``: until every
        one has."""
        while self.running or (wait and self.waiting):
            if not self.running:  # (donors that join each other: one of them first)
                self._submit(anyway=True)
            done, _ = concurrent.futures.wait(
                self.running, timeout=None if wait else 0,
                return_when=concurrent.futures.FIRST_COMPLETED)
            if not done:
                return
            for future in done:
                action = self.running.pop(future)
                self.unfinished.discard(action.container.name)
                error = future.exception()
                if error is not None and not isinstance(error, Exception):
                    raise error  # (KeyboardInterrupt, SystemExit)
                yield action, error
            self._submit()


def _donor(ctr: DesiredContainer) -> str:
    """The container whose namespaces ``ctr`` joins ("" for none)."""
    return ctr.target if ctr.mode == MODE_CONTAINER else ""


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0
