"""sdnctl-agent: one per host. Registers with the controller, watches the host's desired state
and reconciles the kernel to it.

Two threads: the *watcher* keeps a Watch stream open (re-registering and resuming from its last
revision after any break, on the next controller of ``--controller a,b,c`` when there are
several replicas) and folds events into the desired state; the *reconciler* (the main
thread, the only one that writes to the kernel) runs a pass whenever the desired state changed,
and every ``--resync`` seconds anyway to catch drift and exited processes, then reports status.

CNI ADD's fast path (issue 17) runs on the reconciler's thread too: the CNI service queues the
attachment the controller has just recorded (``Agent.attach_now``), and the reconciler builds it
between two passes (``Reconciler.attach_now``), before the Watch stream brings it; the
attachment is in the desired state from then on (``DesiredState.add_provisional``), so no pass
takes it for something unwanted, and the next pass reports it.

A *kernel watcher* (``watch_kernel``) reads the kernel's announcements of this namespace
(``agent/kernel/kevents.py``) and asks for a full pass at once when one is drift
(``agent/drift.py``): someone took away what the desired state wants.

The *resolver* (``agent/dns.py``) answers containers' DNS queries on each bridge's
gateway; the watcher hands it the networks' name tables after every event, so a name resolves
as soon as the controller has written it.

Stopping the agent (SIGTERM, or SIGKILL) leaves everything running: a new agent adopts it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import random
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from agent import dns, drift, imagegc
from agent import plan as p
from agent.cni import AgentSide, CniService, Realised
from agent.containers import PARALLEL_STARTS
from agent.desired import Changed, DesiredContainer, DesiredState, LocalHost
from agent.dockerplugin import DockerPluginServer, DockerSide, Plugin, accept_in_docker_user
from agent.drivers import DRIVERS
from agent.imagefetch import GrpcFetcher
from agent.imagestore import ImageStore
from agent.kernel import conntrack, kevents, procfs, rtnl, sysctl
from agent.kernel.firewall import Firewall, FlowSample
from agent.kernel.linkbase import MAIN_TABLE
from agent.kernel.links import Links, PreparedVeth, prepare_veth, remove_link_now
from agent.kernel.netns import open_netlink_fd
from agent.kernel.policyfw import PolicyFirewall
from agent.kernel.seams import FirewallOps, LinkOps
from agent.kernel.shaping import Shaper
from agent.metrics import AgentMetrics, Timed
from agent.modes import MODES
from agent.names import veth_name, vtep_mac_for
from agent.plan import RESTART_DELAY
from agent.portproxy import PortProxy, wanted_proxies
from agent.reconcile import Outcome, Reconciler
from agent.runtime import RUNTIMES, OciRuntime
from sdnctl.api import convert, signals, wire
from sdnctl.api.metrics import DEFAULT_ADDRESS, MetricsServer, serve_metrics
from sdnctl.api.model import STATE_EXITED, ContainerStatus
from sdnctl.api.tlsfiles import TlsFiles
from sdnctl.cni.plugin import AGENT_SOCKET, SOCKET_ENV
from sdnctl.v1 import sdnctl_pb2 as pb

if TYPE_CHECKING:  # (the generated stubs import grpcio: the agent calls through wire)
    from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

CONTROLLER = pb.DESCRIPTOR.services_by_name["Controller"]
HOSTSYNC = pb.DESCRIPTOR.services_by_name["HostSync"]

log = logging.getLogger("sdnctl.agent")

#: Events (repairs, container state changes) kept for the next report.
EVENTS_MAX = 1000
#: Flows (and drop counters) sent in one report at most.
FLOWS_MAX = 500
#: How long a CNI ADD waits for the reconciler's thread to take up its fast path (a long pass,
#: one pulling an image, may hold it) before it waits for a pass to build the attachment.
ATTACH_NOW_WAIT = 2.0
#: How long a pass may be held back for CNI ADDs whose record the controller is writing (their
#: attachments are built first, and the pass then has nothing to do for them) and DELs; the
#: Watch stream's events wait as long at most after such calls began (see watch_forever).
ATTACH_HOLD = 0.1
#: Seconds between full passes (``--resync``): with the kernel's announcements, which have drift
#: repaired as it happens, a full pass is the safety net (kube-proxy's sync period is 30 s too);
#: without them (``--kernel-events off``) it is the only repair. At 100 lab agents on two cores
#: the full passes were half of what idle agents cost.
RESYNC = 30.0
RESYNC_WITHOUT_EVENTS = 10.0
#: A pass that met errors is tried again this much later, doubled at each failure in a row up
#: to the resync interval (the pass that made progress and failed retries after 1 s anyway).
RETRY = 1.0
#: How often the kernel watcher looks whether the agent is stopping (it waits on its sockets).
KERNEL_WATCH_WAKE = 5.0
#: Periodic work (full passes, flow readings) comes after a random 75-100 % of its interval.
SPREAD = 0.25


def retry_after(failures: int, resync: float) -> float:
    """Seconds until a pass is tried again after ``failures`` failed passes in a row."""
    return min(resync, RETRY * 2 ** min(failures - 1, 10))


def spread(interval: float) -> float:
    """``interval`` shortened by a random part of SPREAD. Agents started together (``sdnctl
    up`` of a lab, a fleet rebooted) would otherwise make their full passes and flow readings
    at the same moments for ever: 100 lab agents on two cores put a half-second burst of CPU
    every ten seconds, and a change that fell in it (a host joining: every agent's peer pass)
    waited behind it. Never longer than ``interval``: a full pass stays due at least that
    often."""
    return interval * (1.0 - random.uniform(0.0, SPREAD))


@dataclass
class AttachJob:
    """A CNI attachment the controller has recorded (at ``revision``), to be built at once."""

    ctr: DesiredContainer
    revision: int
    prepared: PreparedVeth | None = None  # its pair, made while the controller recorded it
    done: threading.Event = field(default_factory=threading.Event)
    built: bool = False
    error: Exception | None = None
    abandoned: bool = False  # its ADD stopped waiting: a pass builds it


def running_for() -> float:
    """Seconds since this process started (exec'd by nsenter or a shell: the same PID)."""
    ticks = procfs.start_time(os.getpid()) or 0
    return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")


class ExitWatcher(threading.Thread):
    """Wakes the reconciler the moment a container's process exits (pidfds in one poll), so a
    restart policy acts at once instead of at the next resync."""

    def __init__(self, on_exit: Callable[[], None]) -> None:
        super().__init__(name="exits", daemon=True)
        self.on_exit = on_exit
        self._wanted: set[int] = set()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def watch(self, pids: set[int]) -> None:
        with self._lock:
            if pids == self._wanted:
                return
            self._wanted = set(pids)
        os.write(self._wake_w, b"x")

    def run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        fds: dict[int, int] = {}  # pid -> pidfd
        while True:
            with self._lock:
                wanted = set(self._wanted)
            for pid in set(fds) - wanted:
                poller.unregister(fds[pid])
                os.close(fds.pop(pid))
            for pid in wanted - set(fds):
                try:
                    fds[pid] = os.pidfd_open(pid)
                except ProcessLookupError:
                    self.on_exit()
                    continue
                poller.register(fds[pid], select.POLLIN)
            for fd, _ in poller.poll():
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    continue
                pid = next(p for p, f in fds.items() if f == fd)
                poller.unregister(fd)
                os.close(fds.pop(pid))
                with self._lock:
                    self._wanted.discard(pid)
                self.on_exit()


def detect_local(args: argparse.Namespace) -> LocalHost:
    """Our underlay address, its interface and MTU, and our VTEP MAC (flags win over detection:
    the interface holding --underlay-ip, else the one of the default route)."""
    with rtnl.Reader(open_netlink_fd(None)) as reader:
        # an IPv6 --underlay-ip (issue 20) is looked up among the IPv6 addresses
        family = socket.AF_INET6 if ":" in args.underlay_ip else socket.AF_INET
        addresses = [(cidr.split("/")[0], index) for index, cidr in reader.global_addresses()
                     if (":" in cidr) == (family == socket.AF_INET6)]
        links = {link.index: link for link in reader.links()}
        index = None
        if args.underlay_dev:
            index = next((i for i, link in links.items() if link.ifname == args.underlay_dev),
                         None)
        elif args.underlay_ip:
            index = next((i for ip, i in addresses if ip == args.underlay_ip), None)
        else:
            index = next((r.oif for r in reader.routes(socket.AF_INET)
                          if r.dst_len == 0 and r.table == MAIN_TABLE and r.oif), None)
        if index is None or index not in links:
            return LocalHost(args.underlay_ip, args.underlay_dev,
                             args.vtep_mac or vtep_mac_for(args.host))
        ip = args.underlay_ip or next((a for a, i in addresses if i == index), "")
        return LocalHost(ip, links[index].ifname,
                         (args.vtep_mac or vtep_mac_for(args.host)).lower(), links[index].mtu)


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Container processes (orphaned when the runtime exits) become our children, so that we
    reap them and learn their exit codes."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("could not become a child subreaper: exit codes will be unknown")


M_ARENA_MAX = -8  # mallopt's parameter (malloc.h)
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """At most MALLOC_ARENAS glibc malloc arenas in this process (as MALLOC_ARENA_MAX=2 would).

    glibc gives a thread that finds the arenas busy a new one, up to 8 per core, and keeps
    each arena's memory. The agent's threads (watch, reconciler, DNS, CNI, per-namespace
    helpers) are mostly waiting on the interpreter's lock, so the extra arenas bought nothing
    and cost memory: the churn test's agent grew ~1.4 MB per round of container
    create/delete until it had 16 of them, +20 MB in all (+1 MB with two arenas); it was
    issue 21's unexplained RSS growth over churn cycles. Before any thread starts."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS):
        log.warning("could not limit malloc arenas: memory may grow with thread churn")


class Agent:
    def __init__(self, args: argparse.Namespace, local: LocalHost | None = None) -> None:
        self.args = args
        self.local = local if local is not None else detect_local(args)
        self.desired = DesiredState(local=self.local)
        self.lock = threading.Lock()
        self.dirty = threading.Event()
        self.stopping = threading.Event()
        # Controller replicas, tried in order: the watcher moves to the next one when its stream
        # breaks and resumes there from its last revision (every replica serves the same store).
        cert = getattr(args, "tls_cert", "")
        tls = TlsFiles(cert, args.tls_key, args.tls_ca) if cert else None
        self.addresses = [a.strip() for a in args.controller.split(",") if a.strip()]
        self.channels = [wire.open_channel(a, tls) for a in self.addresses]
        self.sync_stubs = [cast("pb_grpc.HostSyncStub", wire.Stub(c, HOSTSYNC))
                           for c in self.channels]
        self.control_stubs = [cast("pb_grpc.ControllerStub", wire.Stub(c, CONTROLLER))
                              for c in self.channels]
        self.current = 0
        self.last_report: tuple[int, list[ContainerStatus]] | None = None
        #: The revision of the last Watch event the controller wants reported (any but a
        #: keepalive notice): a report is due when it is newer than the last one reported.
        self.content_revision = 0
        self.pending_pass = True  # the desired state changed (or a process exited) since
        self.pending_policy = False  # the policy input alone changed since (Changed.POLICY)
        self.pending_peers = False  # overlays' peers alone changed since (Changed.PEERS)
        self.pending_full = False  # the kernel announced drift since (``watch_kernel``)
        self.drift = drift.Drift(kevents.own_thread)
        self.wanted: tuple[int, drift.Wanted] | None = None  # (generation, what it wants)
        self.generation = 0  # counts changes of the desired state
        self.repairs = 0  # actions taken while the desired state stood still (drift)
        self.watching = False  # a Watch stream delivered its first event and has not broken
        self.attach_jobs: list[AttachJob] = []  # CNI ADDs' fast paths, for the reconciler
        self.holding = 0  # CNI ADDs and DELs under way (hold_passes)
        self.holding_since = 0.0  # when ``holding`` last went from 0 to 1
        self.attach_cond = threading.Condition(self.lock)
        # CNI (issue 17): the plugin's calls wait for the passes published here.
        self.realised = Realised()
        address = getattr(args, "cni_socket", "")
        self.cni = CniService(AgentSide(
            host=args.host, controllers=self.addresses, sync=lambda: self.sync,
            desired=self._desired_copy, connected=lambda: self.watching,
            realised=self.realised, resolver=bool(getattr(args, "dns_port", 0)),
            remove_veth=self._remove_veth, hold_passes=self.hold_passes,
            prepare_veth=prepare_veth,
            attach_now=self.attach_now),
            address if address.startswith("/") else "\0" + address.lstrip("@")) \
            if address else None
        # Docker (issue 18): libnetwork's remote and IPAM drivers, off unless --docker-socket.
        docker_socket = getattr(args, "docker_socket", "")
        self.docker = DockerPluginServer(Plugin(DockerSide(
            host=args.host, sync=lambda: self.sync,
            control=lambda: self.control_stubs[self.current],
            desired=self._desired_copy, realised=self.realised, kernel=Links,
            accept_bridge=accept_in_docker_user,
            docker_host=getattr(args, "docker_host", ""),
            remove_veth=self._remove_veth), docker_socket + ".json"),
            docker_socket, getattr(args, "docker_spec", "")) if docker_socket else None
        self.metrics = AgentMetrics()
        self.metrics_server: MetricsServer | None = None
        # What we did since the last report, for `sdnctl events` (bounded: a controller that
        # is away for long misses the oldest).
        self.events: list[pb.AgentEvent] = []
        self.states: dict[str, str] = {}  # container -> its state as last reported
        self.flows: list[pb.Flow] = []  # conntrack's flows of our networks, as last read
        self.flow_sampler = conntrack.FlowSampler()  # (the pass thread's, in the host)
        self.drops: list[pb.Drop] = []  # the guards' drop counters, as last listed
        self.reported_traffic: tuple[list[pb.Flow], list[pb.Drop]] = ([], [])
        self.traffic_fresh = False  # read since the last report (each full pass reads it)
        dns_port = getattr(args, "dns_port", 0)  # 0: no resolver
        self.dns = dns.DnsServer(port=dns_port) if dns_port else None
        self.host_upstreams = dns.read_resolv_conf()
        self.proxy = PortProxy()  # ports on [::1] (issue 20): started with the loop

    def _desired_copy(self) -> DesiredState:
        with self.lock:
            return self.desired.copy()

    def _remove_veth(self, name: str) -> bool:
        """``AgentSide.remove_veth`` and ``DockerSide.remove_veth``: a CNI DEL's or a Docker
        Leave's veth, whose going is not drift."""
        with self.lock:
            self.drift.expect_gone(name)
        removed = False
        try:
            removed = remove_link_now(name)
        finally:
            if not removed:
                with self.lock:
                    self.drift.not_gone(name)
        return removed

    def serve_metrics(self, address: str) -> None:
        self.metrics_server = serve_metrics(self.metrics.registry, address)

    @property
    def metrics_url(self) -> str:
        return self.metrics_server.url if self.metrics_server is not None else ""

    def note(self, kind: str, subject: str, detail: str) -> None:
        with self.lock:
            self.events.append(pb.AgentEvent(at=time.time(), kind=kind, subject=subject,
                                              detail=detail))
            del self.events[:-EVENTS_MAX]

    @property
    def sync(self) -> pb_grpc.HostSyncStub:
        return self.sync_stubs[self.current]

    def next_controller(self) -> bool:
        """Move on to the next replica; True when we went round them all (time to back off)."""
        self.current = (self.current + 1) % len(self.channels)
        if len(self.channels) > 1:
            log.warning("moving to controller %s", self.addresses[self.current])
        return self.current == 0

    @contextlib.contextmanager
    def hold_passes(self) -> Iterator[None]:
        """``AgentSide.hold_passes``: a CNI ADD asks the controller for its record and, built
        at once, makes its answer; a DEL has the controller forget it while its veth goes.
        The stream may bring an ADD's record before the ADD can queue its fast path: passes
        wait (ATTACH_HOLD at most) until it is queued, else one of them would build it while
        the ADD waits; and until the ADD has its answer, else the pass the stream's event asks
        for would hold the interpreter meanwhile. During a DEL, that pass would take the
        guard away meanwhile: an nftables commit, which the veth's removal then waits for (the
        kernel's netdevice notifier of nftables takes the same mutex)."""
        with self.lock:
            if self.holding == 0:
                self.holding_since = time.monotonic()
            self.holding += 1
        try:
            yield
        finally:
            with self.lock:
                self.holding -= 1
                self.attach_cond.notify_all()

    def attach_now(self, ctr: DesiredContainer, revision: int,
                   prepared: PreparedVeth | None = None) -> bool:
        """``AgentSide.attach_now``: have the reconciler's thread build ``ctr`` between two
        passes; False when a pass must (or the thread was busy for ATTACH_NOW_WAIT)."""
        job = AttachJob(ctr, revision, prepared)
        with self.lock:
            self.attach_jobs.append(job)
            self.attach_cond.notify_all()
        self.dirty.set()
        if not job.done.wait(ATTACH_NOW_WAIT):
            with self.lock:
                job.abandoned = not job.done.is_set()
            if job.abandoned:
                return False
        if job.error is not None:
            raise job.error
        return job.built

    def run_attach_jobs(self, reconciler: Reconciler) -> bool:
        """The fast paths queued by ``attach_now`` (the reconciler's thread); True when any ran.
        A built attachment stays in the desired state (provisional until the stream brings
        it); one that failed or was declined leaves it as it was."""
        with self.lock:
            jobs, self.attach_jobs = self.attach_jobs, []
        for job in jobs:
            with self.lock:
                if job.abandoned:
                    continue
                wanted = self.desired.add_provisional(job.revision, job.ctr)
                desired = self.desired.copy()
            started = time.monotonic()
            try:
                job.built = wanted and reconciler.attach_now(desired, job.ctr, job.prepared)
                if job.built:
                    log.info("attachment %s built at once in %.0f ms", job.ctr.name,
                             (time.monotonic() - started) * 1000)
            except Exception as e:
                log.warning("attachment %s: %s", job.ctr.name, e)
                job.error = e
            with self.lock:
                if job.built:
                    self.pending_pass = True  # its status comes with the next pass
                    self.generation += 1
                else:
                    self.desired.drop_provisional(job.ctr)
            job.done.set()
        return bool(jobs)

    def wake_for_pass(self) -> None:
        with self.lock:
            self.pending_pass = True
        self.dirty.set()

    # -- watcher thread -----------------------------------------------------------------------

    def register(self) -> None:
        self.sync.Register(pb.RegisterRequest(
            host=self.args.host, underlay_ip=self.local.underlay_ip, agent_pid=os.getpid(),
            netns=self.args.netns, vtep_mac=self.local.vtep_mac,
            underlay_mtu=self.local.underlay_mtu, metrics_url=self.metrics_url,
            docker_host=getattr(self.args, "docker_host", ""),
            capabilities=list(dict.fromkeys([*MODES, *DRIVERS]))),
            timeout=10)

    def watch_forever(self) -> None:
        backoff = 0.1
        while not self.stopping.is_set():
            try:
                self.register()
                with self.lock:
                    since = self.desired.revision if self.desired.synced else 0
                stream = self.sync.Watch(pb.WatchRequest(host=self.args.host,
                                                         since_revision=since,
                                                         keeps_names=True,
                                                         keeps_endpoints=True))
                self._stream = stream
                for event in stream:
                    backoff = 0.1
                    self.watching = True
                    with self.lock:
                        # The event of an ADD's own record comes while the ADD builds it (a
                        # DEL's while its veth goes): it is applied once the call has its
                        # answer (its Python work would hold the interpreter meanwhile, and
                        # the pass it asks for compete), ATTACH_HOLD after calls began at most.
                        self.attach_cond.wait_for(
                            lambda: self.holding == 0 or time.monotonic() >=
                            self.holding_since + ATTACH_HOLD,
                            max(0.0, self.holding_since + ATTACH_HOLD - time.monotonic()))
                        changed = self.desired.apply(event)
                        if not event.keepalive:  # (a keepalive notice needs no report)
                            self.content_revision = self.desired.revision
                        if changed & Changed.POLICY:
                            self.pending_policy = True  # with no pass: the policy table alone
                        if changed & Changed.PEERS:
                            self.pending_peers = True
                            self.generation += 1
                        if changed & Changed.HOST:
                            self.pending_pass = True
                            self.generation += 1
                            if self.proxy.thread.is_alive():
                                self.proxy.update(wanted_proxies(self.desired))
                        if changed & (Changed.HOST | Changed.NAMES) and self.dns is not None:
                            # (each network's zone built when first queried: dns.LazyZones)
                            self.dns.serve_networks(self.desired.networks.values(),
                                                    self.host_upstreams)
                    self.dirty.set()  # a progress notice alone is reported, not reconciled
            except wire.RpcError as e:
                self.watching = False
                if self.stopping.is_set():
                    return
                log.warning("stream from controller %s broke (%s)",
                            self.addresses[self.current],
                            e.code().name)
                if not self.next_controller():
                    continue  # another replica may answer at once: resume there
            self.stopping.wait(backoff + random.uniform(0, backoff / 2))
            backoff = min(backoff * 2, 5.0)

    # -- kernel watcher thread -------------------------------------------------------------------

    def watch_kernel(self) -> None:
        """Drift as the kernel announces it (``agent/drift.py``): a full pass at once, rather
        than at the next resync. Without the announcements, the resync alone repairs."""
        try:
            announcements = kevents.Announcements()
        except OSError as e:
            log.warning("no kernel announcements (%s): drift waits for the resync", e)
            return
        try:
            while not self.stopping.is_set():
                ready, _, _ = select.select(announcements.sockets(), [], [], KERNEL_WATCH_WAKE)
                for sock in ready:
                    events = announcements.read(sock)
                    if events and (reasons := self._drift(events)):
                        log.info("drift: %s: a full pass now", "; ".join(reasons[:5]))
                        self.dirty.set()
        finally:
            announcements.close()

    def _drift(self, events: list[kevents.KernelEvent]) -> list[str]:
        """Why ``events`` are drift, if they are; a full pass is then pending."""
        with self.lock:
            reasons = self.drift.check(events, self._wanted)
            if reasons:
                self.pending_full = self.pending_pass = True
        return reasons

    def _wanted(self) -> drift.Wanted:
        """What the desired state wants of the kernel, computed once per generation (under
        ``self.lock``)."""
        if self.wanted is None or self.wanted[0] != self.generation:
            self.wanted = (self.generation, drift.wanted(self.desired))
        return self.wanted[1]

    def collect_images(self) -> None:
        """Every ``--image-gc-interval``: images no container used for ``--image-gc-grace``
        go, with the layers only they needed (:mod:`agent.imagegc`)."""
        while not self.stopping.wait(self.args.image_gc_interval):
            try:
                report = imagegc.prune(self.args.store_dir, self.args.image_gc_grace)
            except OSError as e:
                log.warning("image garbage collection failed: %s", e)
                continue
            if report.removed_layers:
                log.info("image gc: removed %d image(s), %d layer(s), %d bytes",
                         len(report.removed_images), len(report.removed_layers),
                         report.freed_bytes)

    # -- reconciler (main thread) ---------------------------------------------------------------

    def run(self) -> None:
        links = Links()
        firewall = Firewall()
        try:  # conntrack's byte counters, for flows' rates (this host's namespace only)
            sysctl.ensure_sysctl("net.netfilter.nf_conntrack_acct", "1")
        except Exception as e:
            log.warning("no conntrack accounting, flows will show no rates: %s", e)
        self.metrics.add_drops(firewall.drops)
        policy_fw = PolicyFirewall()
        self.metrics.add_policy_counters(policy_fw.counters)
        runtime = OciRuntime(self.args.runtime, os.path.join(self.args.run_dir, "runtime"))
        images = ImageStore(self.args.store_dir, GrpcFetcher(
            lambda: self.sync, self.args.registry_config or None))
        reconciler = Reconciler(self.args.run_dir,
                                cast(LinkOps, Timed(links, self.metrics.netlink_seconds)),
                                cast(FirewallOps, Timed(firewall, self.metrics.nft_seconds)),
                                sysctl, host_netns=self.args.netns,
                                local=self.local, runtime=runtime, images=images,
                                policy_fw=policy_fw, shaper=Shaper(),
                                parallel_starts=self.args.parallel_starts)
        if self.dns is not None:
            self.dns.start()
        self.proxy.start()
        watcher = threading.Thread(target=self.watch_forever, name="watch", daemon=True)
        watcher.start()
        exits = ExitWatcher(self.wake_for_pass)
        exits.start()
        if getattr(self.args, "kernel_events", "on") == "on":
            threading.Thread(target=self.watch_kernel, name="kernel-watch", daemon=True).start()
        if self.cni is not None:
            self.cni.start()
        if self.args.image_gc_interval > 0:
            threading.Thread(target=self.collect_images, name="image-gc", daemon=True).start()
        if self.docker is not None:
            self.docker.start()
        # A full pass is due this often even when events keep waking us (progress notices
        # must not push drift repair past one resync interval).
        due = time.monotonic()
        full_due = due
        # Flows and drop counters are read with every full pass and, in between, every
        # --flows-interval seconds (a listing and a conntrack dump, no pass).
        flows_due = due + spread(self.flows_interval)
        statuses: list[ContainerStatus] | None = None
        last_generation: int | None = None
        failures = 0  # passes in a row that met errors
        try:
            while not self.stopping.is_set():
                self.dirty.wait(max(0.0, min(due, flows_due) - time.monotonic()))
                if self.stopping.is_set():
                    break
                self.dirty.clear()
                with self.lock:
                    self.attach_cond.wait_for(
                        lambda: self.holding == len(self.attach_jobs) == 0
                        or bool(self.attach_jobs), ATTACH_HOLD)
                    waiting = self.pending_pass or self.pending_policy or \
                        self.pending_peers or time.monotonic() >= due or statuses is None
                if self.run_attach_jobs(reconciler):
                    # The pass that reports it comes with the stream's event; one already due
                    # waits, like any other, until the ADD has its answer (the hold above).
                    if waiting:
                        self.dirty.set()
                    continue
                flows_now = time.monotonic() >= flows_due
                if flows_now:
                    flows_due = time.monotonic() + spread(self.flows_interval)
                with self.lock:
                    desired = self.desired.copy()
                    needed = self.pending_pass or time.monotonic() >= due or statuses is None
                    policy_now = self.pending_policy and not needed  # (a pass does it too)
                    peers_now = self.pending_peers and not needed
                    self.pending_policy = self.pending_peers = False
                    # A full pass lists the nftables ruleset (drift); the others trust what
                    # the agent wrote. One is due every resync interval, however busy we are.
                    full = time.monotonic() >= full_due or last_generation is None or \
                        self.pending_full
                    self.pending_pass = self.pending_full = False
                    generation = self.generation
                if self.cni is not None:  # (DELs under way: see CniService.leaving)
                    for name in self.cni.leaving(desired.revision):
                        desired.containers.pop(name, None)
                if not desired.synced:  # the first snapshot wakes us when it comes
                    due = time.monotonic() + spread(self.args.resync)
                    continue
                if not needed:  # only the revision, the peers or the policy input moved on
                    if peers_now:
                        if not self.sync_peers(reconciler, desired):
                            continue  # a whole pass is due: next round
                        if last_generation is not None:  # realised: later drift is drift
                            last_generation = generation
                    error = reconciler.sync_policies(desired) if policy_now else None
                    if error is not None:
                        self.wake_for_pass()  # a pass retries it, and reports the error
                        continue
                    if flows_now:
                        self.read_traffic(desired, firewall, listed=False)
                    self.realised.publish(desired.revision, statuses or [])
                    self.report(desired.revision, statuses or [])
                    continue
                started, cpu = time.monotonic(), time.thread_time()
                if full:
                    full_due = started + spread(self.args.resync)
                outcome = reconciler.reconcile(desired, full)
                with self.lock:  # (links made before the announcements were listened to)
                    self.drift.observed(outcome.observed.links)
                repairs: list[p.Action] = []
                if generation == last_generation:  # (a retry after a failed pass is not one)
                    repairs = self.log_repairs(outcome.actions)
                self.record_pass(full, desired, outcome, started, cpu, repairs)
                last_generation = None if outcome.errors else generation
                if outcome.actions and outcome.errors:
                    self.stopping.wait(1.0)  # then retry rather than at the next resync
                    self.wake_for_pass()
                if statuses is None:
                    log.info("ready %.0f ms after start: the first pass made %d action(s) for "
                             "%d container(s) (%.0f ms of CPU since start)", running_for() * 1000,
                             len(outcome.actions), len(desired.containers),
                             time.process_time() * 1000)
                statuses = reconciler.statuses(desired, outcome)
                self.realised.publish(desired.revision, statuses)
                gone = [name for name, ctr in desired.containers.items()
                        if ctr.cni_netns and not ctr.cni_docker
                        and (state := outcome.observed.containers.get(name)) is not None
                        and not state.netns]
                if gone and self.cni is not None:
                    self.cni.forget_gone(gone)
                if self.docker is not None:  # Docker endpoints whose sandbox went (issue 18)
                    self.docker.plugin.forget_gone(
                        [name for name, ctr in desired.containers.items() if ctr.cni_docker
                         and veth_name(name, ctr.interface) not in outcome.observed.links],
                        started)
                self.metrics.record_containers(statuses)
                self.note_states(statuses)
                if full or flows_now:  # (not on every change: busy hosts' passes stay lean)
                    self.read_traffic(desired, firewall, listed=full)
                    flows_due = time.monotonic() + spread(self.flows_interval)
                exits.watch({s.pid for s in statuses if s.pid})
                due = time.monotonic() + (min(self.args.resync, RESTART_DELAY)
                                          if outcome.restart_pending
                                          else spread(self.args.resync))
                failures = failures + 1 if outcome.errors else 0
                if failures:
                    due = min(due, time.monotonic() + retry_after(failures, self.args.resync))
                self.report(desired.revision, statuses)
        finally:
            if self.cni is not None:
                self.cni.stop()
            if self.docker is not None:
                self.docker.stop()
            links.close()
            self.flow_sampler.close()
            if self.dns is not None:
                self.dns.stop()
            self.proxy.stop()
            for channel in self.channels:
                channel.close()

    def sync_peers(self, reconciler: Reconciler, desired: DesiredState) -> bool:
        """The peer work alone (``Reconciler.sync_peers``); False when it asked for a whole
        pass or failed (one is then pending: it plans everything, and retries)."""
        started, cpu = time.monotonic(), time.thread_time()
        outcome = reconciler.sync_peers(desired)
        if outcome is not None:
            self.record_pass(False, desired, outcome, started, cpu, [], "peer ")
        if outcome is None or outcome.errors:
            self.wake_for_pass()
            return False
        return True

    def record_pass(self, full: bool, desired: DesiredState, outcome: Outcome, started: float,
                    cpu: float, repairs: list[p.Action], kind: str = "") -> None:
        """A pass's metrics, and its log line when it did something (``started``: monotonic,
        ``cpu``: thread time, when it began)."""
        self.metrics.record_pass(full, time.monotonic() - started, outcome.actions,
                                 len(outcome.errors), repairs)
        if outcome.actions:
            log.info("revision %d: %d %saction(s) in %.0f ms (%.0f ms of CPU)%s",
                     desired.revision, len(outcome.actions), kind,
                     (time.monotonic() - started) * 1000, (time.thread_time() - cpu) * 1000,
                     f", {len(outcome.errors)} failed" if outcome.errors else "")

    def log_repairs(self, actions: list[p.Action]) -> list[p.Action]:
        """Drift: the kernel moved while the desired state did not. One event per repair;
        returns the repairs."""
        repairs = [action for action in actions if p.is_repair(action)]
        for action in repairs:
            self.repairs += 1
            log.warning("repair: %s (%d repairs since start)", p.describe(action),
                        self.repairs)
            self.note("repair", type(action).__name__, p.describe(action))
        return repairs

    def note_states(self, statuses: list[ContainerStatus]) -> None:
        """One event per container whose state changed since the last pass (or went away)."""
        now = {s.name: s for s in statuses}
        for name, status in now.items():
            before = self.states.get(name, "")
            if before != status.state:
                detail = f"{before or 'new'} -> {status.state}"
                if status.state == STATE_EXITED:
                    detail += f" (code {status.exit_code})"
                self.note("container-state", name, detail)
        for name in set(self.states) - set(now):
            self.note("container-state", name, f"{self.states[name]} -> removed")
        self.states = {name: s.state for name, s in now.items()}

    @property
    def flows_interval(self) -> float:
        """Seconds between two readings of flows outside full passes (inf: none)."""
        interval = float(getattr(self.args, "flows_interval", 0.0) or 0.0)
        return interval if interval > 0 else float("inf")

    def read_traffic(self, desired: DesiredState, firewall: Firewall, listed: bool) -> None:
        """Flows between addresses of our networks (one conntrack dump, and the bridge table's
        sets for frames bridged between two containers, which conntrack does not see without
        br_netfilter) and the drop counters, for the next report. ``listed``: the ruleset was
        just listed by a full pass; else it is listed here for its counters and sets."""
        subnets = sorted({n.cidr or n.subnet for n in desired.networks.values()
                          if n.cidr or n.subnet})
        try:
            if not listed:
                firewall.read_counters()
            samples = self.flow_sampler.samples(subnets) if subnets else []
        except Exception as e:
            log.debug("could not read flows: %s", e)
            samples = []
        self.flows = [pb.Flow(host=self.args.host, src=s, dst=d, proto=proto, packets=packets,
                              bytes=size)
                      for s, d, proto, packets, size in
                      merge_flows(samples, firewall.bridged_flows())[:FLOWS_MAX]]
        self.drops = drops_of(self.args.host, firewall)[:FLOWS_MAX]
        self.traffic_fresh = bool(self.flows)

    def report(self, revision: int, statuses: list[ContainerStatus]) -> None:
        with self.lock:
            events = list(self.events)
            wanted = self.content_revision
        traffic = (self.flows, self.drops)
        if not report_due(self.last_report, revision, statuses, wanted,
                          bool(events) or self.traffic_fresh or traffic != self.reported_traffic):
            return
        request = pb.ReportStatusRequest(
            host=self.args.host, observed_revision=revision,
            containers=[convert.status_to_pb(s) for s in statuses], events=events,
            flows=traffic[0], drops=traffic[1])
        for _ in self.channels:
            try:
                self.sync_stubs[self.current].ReportStatus(request,
                                                                              timeout=10)
                self.last_report = (revision, statuses)
                self.reported_traffic = traffic
                self.traffic_fresh = False
                with self.lock:
                    del self.events[:len(events)]
                return
            except wire.RpcError as e:
                log.warning("could not report status to %s: %s",
                            self.addresses[self.current], e)
                if e.code() != wire.StatusCode.UNAVAILABLE:
                    return
                self.next_controller()

    def stop(self) -> None:
        self.stopping.set()
        self.dirty.set()
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.cancel()


def report_due(last: tuple[int, list[ContainerStatus]] | None, revision: int,
               statuses: list[ContainerStatus], wanted: int, news: bool) -> bool:
    """Whether a status report is due (pure). ``last``: the (revision, statuses) last reported;
    ``wanted``: the revision of the last Watch event the controller wants reported (any but
    a keepalive notice); ``news``: events, or flows and drops to send (flows are sent after
    every read while there are some: their rates need the counters of each full pass,
    unchanged ones too). A revision that moved by keepalive notices alone is not news: the
    controller counts what did not concern this host as realised (reporting each notice was a
    store write per agent every progress interval, each moving the revision for every other
    host: 100 idle agents wrote ten a second)."""
    if last is None or news or last[1] != statuses:
        return True
    return last[0] != revision and wanted > last[0]


def merge_flows(tracked: list[FlowSample], bridged: list[FlowSample]) -> list[FlowSample]:
    """Conntrack's flows, and the bridged ones of pairs conntrack does not track already (with
    br_netfilter loaded, it sees bridged frames too)."""
    seen = {(frozenset((s, d)), p) for s, d, p, _, _ in tracked}
    return sorted([*tracked, *(f for f in bridged if (frozenset(f[:2]), f[2]) not in seen)])


def drops_of(host: str, firewall: Firewall) -> list[pb.Drop]:
    """The drop counters as last listed: containers' guards, networks' forwarding rules and
    the VXLAN filter (those that dropped something)."""
    drops = [pb.Drop(host=host, kind=pb.DROP_KIND_CONTAINER, container=c, reason=r, packets=n)
             for (c, r), n in sorted(firewall.container_drops().items())]
    drops += [pb.Drop(host=host, kind=pb.DROP_KIND_NETWORK, network=net, reason=r, packets=n)
              for (net, r), n in sorted(firewall.network_drops().items())]
    drops += [pb.Drop(host=host, kind=pb.DROP_KIND_VXLAN, reason=guard, packets=n)
              for guard, n in sorted(firewall.drops().items())
              if guard.startswith("vxlan-") and n > 0]
    return drops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdnctl-agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", required=True, help="this host's name")
    parser.add_argument("--controller", default="unix:/run/sdnctl/controller.sock",
                        help="controller address(es), comma-separated: replicas tried in order; "
                        "unix:/path or tcp:HOST:PORT (TCP: mutual TLS, --tls-*) "
                        "(default: %(default)s)")
    parser.add_argument("--tls-cert", default="", help="this agent's certificate, issued by "
                        "`sdnctl pki issue --agent HOST` (default: $SDNCTL_TLS_CERT)")
    parser.add_argument("--tls-key", default="", help="its key (default: $SDNCTL_TLS_KEY)")
    parser.add_argument("--tls-ca", default="", help="the CA (default: $SDNCTL_TLS_CA)")
    parser.add_argument("--underlay-ip", default="", help="address other hosts reach us on "
                        "(default: that of the default route's interface)")
    parser.add_argument("--underlay-dev", default="",
                        help="underlay interface (default: the one holding --underlay-ip)")
    parser.add_argument("--vtep-mac", default="",
                        help="MAC of our VXLAN devices (default: derived from --host)")
    parser.add_argument("--netns", default="", help="our network namespace path, as reported")
    parser.add_argument("--run-dir", default="", help="default: /run/sdnctl/<host>")
    parser.add_argument("--store-dir", default="",
                        help="images, containers' writable layers and volumes "
                        "(default: /var/lib/sdnctl/<host>)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="crun",
                        help="OCI runtime (default: %(default)s)")
    parser.add_argument("--resync", type=float,
                        default=float(os.environ.get("SDNCTL_RESYNC") or 0) or None,
                        help="seconds between full passes, which find and repair drift "
                        f"(default: $SDNCTL_RESYNC, else {RESYNC:.0f}, or "
                        f"{RESYNC_WITHOUT_EVENTS:.0f} with --kernel-events off)")
    parser.add_argument("--kernel-events", choices=("on", "off"),
                        default="off" if os.environ.get("SDNCTL_KERNEL_EVENTS") == "0" else "on",
                        help="listen to this namespace's kernel announcements and repair drift "
                        "at once (off: drift waits for the next full pass) (default: off when "
                        "$SDNCTL_KERNEL_EVENTS is 0, else %(default)s)")
    parser.add_argument("--flows-interval", type=float,
                        default=float(os.environ.get("SDNCTL_FLOWS_INTERVAL") or 5.0),
                        metavar="SECONDS",
                        help="seconds between two readings of flows and drop counters between "
                        "full passes (0: on full passes only) (default: "
                        "$SDNCTL_FLOWS_INTERVAL, else %(default)s)")
    parser.add_argument("--cni-socket", default=os.environ.get(SOCKET_ENV) or AGENT_SOCKET,
                        help="the CNI service's socket: an abstract name in this host's "
                        f"network namespace, or a path; empty: no CNI service (default: "
                        f"${SOCKET_ENV}, else @{AGENT_SOCKET})")
    parser.add_argument("--docker-socket", default="", metavar="PATH",
                        help="serve sdnctl as a Docker network and IPAM plugin on this unix "
                        "socket (default: none)")
    parser.add_argument("--docker-spec", default="", metavar="PATH",
                        help="write the plugin's spec file here, where this host's dockerd "
                        "looks (e.g. /etc/docker/plugins/sdnctl.spec; default: none)")
    parser.add_argument("--docker-host", default="", metavar="URL",
                        help="the dockerd that uses the plugin (unix:///...), as reported to "
                        "the controller for `sdnctl inspect host` (default: none)")
    parser.add_argument("--metrics", default=DEFAULT_ADDRESS, metavar="ADDR",
                        help="serve Prometheus metrics on HOST:PORT, in this host's network "
                        "namespace (port 0 picks a free one; the URL is reported when "
                        "registering; '' for none) (default: %(default)s)")
    parser.add_argument("--dns-port", type=int, default=dns.DNS_PORT,
                        help="port of the containers' resolver on each bridge's gateway "
                        "(0: no resolver; default: %(default)s)")
    parser.add_argument("--registry-config", default="", metavar="FILE",
                        help="this host's own registry file (trust, credentials), for "
                        "registries the controller sends none for (default: "
                        "$SDNCTL_REGISTRY_CONFIG or <run dir>/registries.json)")
    parser.add_argument("--image-gc-interval", type=float, default=300.0, metavar="SECONDS",
                        help="how often unused image layers are collected (0: never) "
                        "(default: %(default)s)")
    parser.add_argument("--image-gc-grace", type=float, default=imagegc.DEFAULT_GRACE,
                        metavar="SECONDS", help="how long an image no container uses is kept "
                        "(default: %(default)s)")
    parser.add_argument("--parallel-starts", type=int, default=PARALLEL_STARTS, metavar="N",
                        help="container starts a pass runs at once (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.parallel_starts < 1:
        parser.error("--parallel-starts: at least 1")
    if args.resync is None:
        args.resync = RESYNC if args.kernel_events == "on" else RESYNC_WITHOUT_EVENTS
    args.run_dir = args.run_dir or f"/run/sdnctl/{args.host}"
    args.store_dir = args.store_dir or f"/var/lib/sdnctl/{args.host}"
    if any((args.tls_cert, args.tls_key, args.tls_ca)) and \
            not all((args.tls_cert, args.tls_key, args.tls_ca)):
        parser.error("--tls-cert, --tls-key and --tls-ca go together")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=f"%(asctime)s agent[{args.host}] %(levelname)s %(message)s")
    become_subreaper()
    limit_malloc_arenas()
    agent = Agent(args)
    try:
        agent.serve_metrics(args.metrics)
    except ValueError as e:
        parser.error(f"--metrics: {e}")
    except OSError as e:
        parser.error(f"--metrics {args.metrics}: {e.strerror or e}")
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    # The pass loop wakes at least every --flows-interval; a SIGTERM one of gRPC's threads
    # took waited that long for it. A thread of ours reads the signals' pipe instead.
    wake = signals.wakeup_pipe()

    def stop_on_signal() -> None:
        signals.wait_for_stop(wake)
        agent.stop()

    threading.Thread(target=stop_on_signal, name="signals", daemon=True).start()
    log.info("starting (controller %s, run dir %s, underlay %s on %s, MTU %d, VTEP MAC %s)",
             args.controller, args.run_dir, agent.local.underlay_ip, agent.local.underlay_dev,
             agent.local.underlay_mtu, agent.local.vtep_mac)
    agent.run()
    log.info("stopped; containers keep running")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
