"""The controller process: one gRPC server with the Controller and HostSync services.

It listens on a unix socket by default (``/run/sdnctl/controller.sock``, mode 0600: only root
talks to it, as admin). A TCP listener (``--listen tcp:HOST:PORT``, repeatable with the socket)
is always mutual TLS: the controller refuses to start one without ``--tls-cert/--tls-key/
--tls-ca``, on loopback too (any local user can dial 127.0.0.1). ``--crl`` names the revocation
list ``sdnctl pki revoke`` writes; it is reloaded when it changes and on SIGHUP. TLS is
terminated by :mod:`sdnctl.controller.tlsfront`, in this process, which refuses a client without
a certificate of the CA, with an expired one or (with ``--crl``) a revoked one in the handshake,
cuts open connections whose certificate a new CRL revokes, and passes the rest on to the gRPC
server's private unix socket. Every call is authenticated, authorized and audited in
:mod:`sdnctl.controller.auth`. It serves gRPC health
checking and server reflection, and keeps its state in one SQLite file or under a prefix of an
etcd cluster (``--store``: any number of controllers may serve one etcd prefix, as they keep no
state of their own). At start it makes sure the default bridge network exists (Docker's
``bip``): containers created without a network join it. A sweeper thread frees expired idle
leases, ends quarantines and trims the IPAM history every ``sweep_interval`` seconds; every
replica runs one, and as each of its writes is a compare-and-swap, two sweepers never free one
thing twice.

One controller per socket: before it touches a socket, the controller takes the lock of
``<socket>.lock`` (and of ``--pidfile``), and holds it until it has removed them at exit; a second
one refuses to start. The socket is bound under a private name and renamed into place, so the
name stays bound to our inode; at exit it is unlinked only if it still is (gRPC itself unlinks
only the private name). A stop goes in order: stop accepting, end the streams (``stopping``),
wait for every handler thread, join the background threads; only then does the caller close the
store and the audit log.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sdnctl.api import faults, paths, signals
from sdnctl.api.metrics import DEFAULT_ADDRESS, MetricsServer, serve_metrics
from sdnctl.api.model import DEFAULT_BRIDGE_SUBNET, Invalid
from sdnctl.api.pki import RevocationList
from sdnctl.api.tlsfiles import PkiError, TlsFiles
from sdnctl.controller import gc, ipam
from sdnctl.controller.audit import AUDIT_KEEP, AUDIT_MAX_BYTES, AuditLog
from sdnctl.controller.auth import SecurityInterceptor
from sdnctl.controller.fanout import Hub, hub_of
from sdnctl.controller.flows import FlowTable
from sdnctl.controller.images import Images, PushTarget, default_blob_dir
from sdnctl.controller.liveview import DEFAULT_ADDRESS as DEFAULT_HTTP
from sdnctl.controller.liveview import LiveView, LiveViewError
from sdnctl.controller.metrics import (
    ControllerMetrics,
    Endpoints,
    MetricsInterceptor,
    metered,
)
from sdnctl.controller.servicers import (
    Connections,
    ControllerServicer,
    ErrorInterceptor,
    HandlerCache,
    HostSyncServicer,
)
from sdnctl.controller.state import State
from sdnctl.controller.store.base import Store, StoreUnavailable
from sdnctl.controller.store.etcd import EtcdError, EtcdStore
from sdnctl.controller.store.spec import (
    add_etcd_arguments,
    describe_store,
    etcd_access,
    open_store,
)
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.controller.tlsfront import ListenError, TlsFront
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

log = logging.getLogger("sdnctl.controller")

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["Controller"].full_name,
    pb.DESCRIPTOR.services_by_name["HostSync"].full_name,
)


TCP_NEEDS_TLS = ("a TCP listener needs mutual TLS (--tls-cert, --tls-key, --tls-ca; see "
                 "`sdnctl pki init`): without it anyone who reaches the port is root on every "
                 "host")


@dataclass
class RunningServer:
    server: grpc.Server
    address: str  # what clients dial: unix:/path or host:port (the first listener)
    stopping: threading.Event
    executor: futures.ThreadPoolExecutor | None = None  # the handlers' threads
    sockets: tuple[tuple[str, int, int], ...] = ()  # unix sockets we bound: (path, dev, inode)

    sweeper: threading.Thread | None = None
    addresses: tuple[str, ...] = ()  # every listener, as clients dial them
    audit: AuditLog | None = None
    revocations: RevocationList | None = None
    collector: threading.Thread | None = None
    scratch: str = ""  # a blob directory made for this server alone, removed when it stops
    heartbeat: threading.Thread | None = None
    front: TlsFront | None = None  # the TCP listeners (mutual TLS)
    metrics: ControllerMetrics | None = None
    endpoints: Endpoints | None = None  # where metrics and the live view are served
    metrics_server: MetricsServer | None = None
    liveview: LiveView | None = None
    hub: Hub | None = None  # the Watch fan-out's reader of the change log

    def stop(self, grace: float = 1.0) -> None:
        self.stopping.set()
        if self.front is not None:
            self.front.close_listeners()
        self.server.stop(grace).wait()
        if self.front is not None:
            self.front.stop()
        # Handlers outlive the RPCs the stop cancelled (a Watch notices ``stopping`` within its
        # poll): wait for them, or they meet a closed store.
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.liveview is not None:
            self.liveview.stop()
        for thread in (self.sweeper, self.heartbeat, self.collector):
            if thread is not None:
                thread.join()
        if self.hub is not None:
            self.hub.stop()
        for path, dev, inode in self.sockets:
            unlink_if_same(path, dev, inode)
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def sweep_forever(state: State, interval: float, stopping: threading.Event) -> None:
    """Run :meth:`State.sweep` every ``interval`` seconds until ``stopping``; a failed sweep
    (e.g. a busy store) is logged and tried again next time."""
    while not stopping.wait(interval):
        try:
            state.sweep()
        except Exception:
            log.exception("IPAM sweep failed")


def beat_forever(connections: Connections, interval: float,
                 stopping: threading.Event) -> None:
    """This replica's heartbeat (and, every ten beats, a sweep of dead replicas' records)."""
    beats = 0
    while True:
        try:
            connections.beat()
            if beats % 10 == 0:
                connections.sweep()
        except Exception:
            log.exception("replica heartbeat failed")
        beats += 1
        if stopping.wait(interval):
            return


#: Seconds between a replica's heartbeats when it serves an etcd store.
REPLICA_HEARTBEAT = 5.0

#: Worker threads of the gRPC server. Every agent's Watch stream holds one for as long as it is
#: open, so this bounds the number of hosts (32 capped a lab at about 31 hosts).
DEFAULT_WORKERS = 512


def is_unix(address: str) -> bool:
    return address.startswith("unix:")


def tcp_address(address: str) -> str:
    """``tcp:HOST:PORT`` or ``HOST:PORT`` as gRPC binds it (``HOST:PORT``)."""
    return address.removeprefix("tcp:").removeprefix("//")


def unlink_if_same(path: str, dev: int, inode: int) -> None:
    """Unlink ``path`` if it is still the file (device, inode) we made."""
    with contextlib.suppress(FileNotFoundError):
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == (dev, inode):
            os.unlink(path)


def _listen_unix(server: grpc.Server, path: str) -> tuple[str, tuple[str, int, int]]:
    """Add a unix socket listener (mode 0600); return the address clients dial and (path,
    device, inode) of the socket.

    gRPC binds a private name beside ``path`` (it unlinks the name it bound when it stops, and
    whatever it finds there when it binds), which is then renamed onto ``path``: one atomic
    step replaces a stale socket, and gRPC never unlinks ``path`` itself. The caller holds the
    socket's lock, so what was at ``path`` was a dead controller's."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    private = os.path.join(directory, f".{os.getpid()}.sock")
    old_umask = os.umask(0o177)  # the socket is born 0600: no window where others can dial
    try:
        if server.add_insecure_port(f"unix:{private}") == 0:
            raise ListenError(f"unix:{path}: could not listen")
    finally:
        os.umask(old_umask)
    os.replace(private, path)
    st = os.stat(path)
    return f"unix:{path}", (path, st.st_dev, st.st_ino)


def unix_path(address: str) -> str:
    return address.removeprefix("unix:").removeprefix("//")


def _listen(server: grpc.Server, address: str, front: TlsFront | None,
            sockets: list[tuple[str, int, int]]) -> str:
    """Add one listener; return the address clients dial. TCP goes through ``front``; a unix
    socket's (path, device, inode) is added to ``sockets``."""
    if is_unix(address):
        dial, made = _listen_unix(server, unix_path(address))
        sockets.append(made)
        return dial
    if front is None:
        raise ListenError(f"{address}: {TCP_NEEDS_TLS}")
    return front.listen(tcp_address(address))


def _start(addresses: list[str], store: Store, state: State, connections: Connections,
           images: Images, audit: AuditLog, stopping: threading.Event, front: TlsFront | None,
           max_workers: int, progress_interval: float, gc_grace: int,
           metrics: ControllerMetrics, endpoints: Endpoints,
           flows: FlowTable) -> RunningServer:
    """The gRPC server with its services, listening (TCP through ``front``) and started."""
    executor = futures.ThreadPoolExecutor(max_workers=max_workers)
    server = grpc.server(executor, interceptors=[HandlerCache(), MetricsInterceptor(metrics),
                                                 SecurityInterceptor(audit, front),
                                                 ErrorInterceptor()])
    pb_grpc.add_ControllerServicer_to_server(
        ControllerServicer(state, connections, images, audit, stopping, gc_grace, endpoints,
                           flows), server)
    pb_grpc.add_HostSyncServicer_to_server(
        HostSyncServicer(state, connections, stopping, images, progress_interval, metrics,
                         audit, flows), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    sockets: list[tuple[str, int, int]] = []
    dials = tuple(_listen(server, a, front, sockets) for a in addresses)
    if front is not None:
        sockets.append(_listen_unix(server, front.backend)[1])
    server.start()
    if front is not None:
        front.start()
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, dials[0], stopping, executor, tuple(sockets), addresses=dials,
                         audit=audit, front=front, metrics=metrics, endpoints=endpoints)


def create_server(address: str | Sequence[str], store: Store,
                  max_workers: int = DEFAULT_WORKERS,
                  progress_interval: float = 10.0,
                  default_bridge: str | None = None,
                  lease_ttl: int = ipam.DEFAULT_TIMERS.lease_ttl,
                  subnet_quarantine: int = ipam.DEFAULT_TIMERS.subnet_quarantine,
                  address_quarantine: int = ipam.DEFAULT_TIMERS.address_quarantine,
                  sweep_interval: float = 10.0,
                  heartbeat: float = 0.0,
                  clock: Callable[[], float] = time.time,
                  tls: TlsFiles | None = None, crl: str | None = None,
                  audit: AuditLog | None = None,
                  blob_dir: str | None = None,
                  gc_grace: int = gc.DEFAULT_GRACE,
                  gc_interval: float = 0.0,
                  tls_dir: str | None = None,
                  metrics_address: str = "", http_address: str = "",
                  registry: PushTarget | None = None,
                  registry_config: str | None = None) -> RunningServer:
    """Build and start a server on ``address`` (one or several): ``unix:/path`` or
    ``[tcp:]host:port`` (port 0 picks). A TCP address needs ``tls`` (mutual TLS), else
    :class:`ListenError` before anything starts. ``crl``: a revocation list file (PEM, signed by
    ``tls.ca``). ``audit``: where the audit records go (default: kept in memory).

    ``default_bridge``: the subnet of the default bridge network, made before serving (None: no
    default bridge; containers must name their network). ``lease_ttl``: seconds a host's lease
    lives without renewal; ``subnet_quarantine``/``address_quarantine``: seconds a freed subnet
    or address waits before someone else may take it; ``sweep_interval``: how often expired
    leases are freed (0: never, for tests that call ``State.sweep`` themselves).
    ``heartbeat``: seconds between this replica's heartbeats, with which replicas sharing a store
    tell each other which agents they serve (0: one controller alone; see ``Connections``).
    ``clock``: unix seconds (tests pass a fake one). ``blob_dir``: where image blobs are kept
    (None: a temporary directory removed when the server stops). ``gc_grace``: seconds between
    the two sightings IPAM garbage collection needs; ``gc_interval``: how often it runs on its
    own (0: only when asked, ``GcIpam``). ``tls_dir``: where the TLS terminator makes its
    private directory (the gRPC server's internal socket; default: the system's temporary
    directory). ``metrics_address``: where to serve Prometheus metrics (``HOST:PORT``, port 0
    picks; "": not served); ``http_address``: the live view's (loopback only, see
    :mod:`sdnctl.controller.liveview`); the URLs bound are in ``running.endpoints``.
    ``registry``: where ``image load`` pushes images (then no blob is kept here; replicas share
    nothing on disk); ``registry_config``: the registry file (trust, credentials) if not the
    default.
    """
    addresses = [address] if isinstance(address, str) else list(address)
    for tcp in (a for a in addresses if not is_unix(a)):
        if tls is None:
            raise ListenError(f"{tcp}: {TCP_NEEDS_TLS}")
    revocations = RevocationList(crl, tls.read()[2]) if crl and tls is not None else None
    audit = audit if audit is not None else AuditLog()
    stopping = threading.Event()
    metrics = ControllerMetrics()
    store = metered(store, metrics)
    metrics.add_ipam(store)
    timers = ipam.Timers(lease_ttl=lease_ttl, subnet_quarantine=subnet_quarantine,
                         address_quarantine=address_quarantine)
    state = State(store, timers, clock)
    state.ensure_indexes()
    if default_bridge:
        state.ensure_default_bridge(default_bridge)
    connections = Connections(store, heartbeat=heartbeat, clock=clock)
    scratch = "" if blob_dir else tempfile.mkdtemp(prefix="sdnctl-blobs-")
    images = Images(store, blob_dir or scratch, registry_config, registry)
    front = TlsFront(tls, revocations, tls_dir) \
        if tls is not None and any(not is_unix(a) for a in addresses) else None
    endpoints = Endpoints()
    flows = FlowTable(clock)
    metrics_server = None
    liveview = None
    try:
        metrics_server = serve_metrics(metrics.registry, metrics_address)
        endpoints.metrics_url = metrics_server.url if metrics_server is not None else ""
        liveview = LiveView(state, connections, http_address, tls, revocations, flows) \
            if http_address else None
        endpoints.ui_url = liveview.url if liveview is not None else ""
        running = _start(addresses, store, state, connections, images, audit, stopping, front,
                         max_workers, progress_interval, gc_grace, metrics, endpoints, flows)
    except BaseException:
        if liveview is not None:
            liveview.stop()
        if metrics_server is not None:
            metrics_server.stop()
        if front is not None:
            front.stop()
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    running.revocations = revocations
    running.scratch = scratch
    running.metrics_server = metrics_server
    running.liveview = liveview
    # Started now, not at the first Watch: GetHost's "realised" answer counts only the writes
    # the hub has read, so a replica without streams of its own still answers it.
    running.hub = hub_of(state)
    running.hub.start()
    if sweep_interval > 0:
        running.sweeper = threading.Thread(target=sweep_forever, name="ipam-sweeper",
                                           args=(state, sweep_interval, stopping), daemon=True)
        running.sweeper.start()
    if heartbeat > 0:
        running.heartbeat = threading.Thread(target=beat_forever, name="replica-heartbeat",
                                             args=(connections, heartbeat, stopping),
                                             daemon=True)
        running.heartbeat.start()
    if gc_interval > 0:
        running.collector = threading.Thread(
            target=gc.collect_forever, name="ipam-gc", daemon=True,
            args=(state, gc_interval, gc_grace, connections.connected, stopping))
        running.collector.start()
    return running




def _seconds(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _tls_dir() -> str | None:
    """The run directory, for the TLS terminator's sockets, unless its path is too long for
    them (then the system's temporary directory)."""
    run = paths.run_dir()
    if len(run) > 64:
        return None
    os.makedirs(run, mode=0o700, exist_ok=True)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdnctl-controller", description=__doc__)
    parser.add_argument("--listen", action="append", metavar="ADDRESS",
                        help="unix:/path or tcp:HOST:PORT (TCP needs --tls-*); repeat for "
                        f"several (default: unix:{paths.controller_socket()})")
    parser.add_argument("--tls-cert", default="", help="the controller's certificate (PEM)")
    parser.add_argument("--tls-key", default="", help="its key (PEM)")
    parser.add_argument("--tls-ca", default="", help="the CA client certificates must chain to")
    parser.add_argument("--crl", default="", help="revocation list written by `sdnctl pki "
                        "revoke` (reloaded when it changes and on SIGHUP)")
    parser.add_argument("--audit-log", default=None, metavar="PATH",
                        help="append audit records here, JSON lines (default: audit.log beside "
                        "--db; '' for memory only)")
    parser.add_argument("--store", default="sqlite", metavar="STORE",
                        help="sqlite:PATH, etcd://host:port,host:port[/prefix] (several "
                        "controllers may share one etcd prefix), memory, or sqlite (the file "
                        "--db) (default: %(default)s)")
    add_etcd_arguments(parser)
    parser.add_argument("--audit-max-bytes", type=int, default=AUDIT_MAX_BYTES,
                        metavar="BYTES", help="rotate the audit log when it passes this size "
                        "(0: never) (default: %(default)s)")
    parser.add_argument("--audit-keep", type=int, default=AUDIT_KEEP, metavar="N",
                        help="rotated audit logs kept (audit.log.1 ... .N) "
                        "(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="gRPC worker threads; each connected agent holds one "
                             "(default: %(default)s)")
    parser.add_argument("--db", default=paths.controller_db(),
                        help="SQLite file (default: %(default)s)")
    parser.add_argument("--blob-dir", default="", help="where image blobs are kept "
                        "(default: 'blobs' beside the SQLite file)")
    parser.add_argument("--pidfile", default="", help="write our PID here")
    parser.add_argument("--default-bridge", default=DEFAULT_BRIDGE_SUBNET, metavar="CIDR",
                        help="subnet of the default bridge network, Docker's bip "
                        "(default: %(default)s; '' for none)")
    parser.add_argument("--lease-ttl", type=_seconds, default=ipam.DEFAULT_TIMERS.lease_ttl,
                        metavar="SECONDS", help="how long a host's subnet lease lives without "
                        "its agent renewing it (default: %(default)s)")
    parser.add_argument("--quarantine", type=_seconds,
                        default=ipam.DEFAULT_TIMERS.subnet_quarantine, metavar="SECONDS",
                        help="how long a freed subnet waits before another host may lease it "
                        "(default: %(default)s)")
    parser.add_argument("--address-quarantine", type=_seconds,
                        default=ipam.DEFAULT_TIMERS.address_quarantine, metavar="SECONDS",
                        help="how long a freed container address waits before reuse "
                        "(default: %(default)s)")
    parser.add_argument("--sweep-interval", type=float, default=10.0, metavar="SECONDS",
                        help="how often expired leases are freed (default: %(default)s)")
    parser.add_argument("--gc-grace", type=_seconds,
                        default=int(os.environ.get("SDNCTL_GC_GRACE") or gc.DEFAULT_GRACE),
                        metavar="SECONDS", help="IPAM garbage collection frees a thing only "
                        "when seen unused twice this long apart ($SDNCTL_GC_GRACE, else "
                        "%(default)s)")
    parser.add_argument("--gc-interval", type=float,
                        default=float(os.environ.get("SDNCTL_GC_INTERVAL") or 0),
                        metavar="SECONDS", help="run IPAM garbage collection this often "
                        "($SDNCTL_GC_INTERVAL, else 0: only on request, `sdnctl ipam gc`)")
    parser.add_argument("--metrics", default=DEFAULT_ADDRESS, metavar="ADDR",
                        help="serve Prometheus metrics on HOST:PORT (port 0 picks a free one; "
                        "`sdnctl status --json` tells the URL; '' for none) "
                        "(default: %(default)s)")
    parser.add_argument("--http", default=DEFAULT_HTTP, metavar="ADDR",
                        help="serve the live view on HOST:PORT: loopback only, unless --tls-* "
                        "(then HTTPS with client certificates, a reader role) (port 0 picks a "
                        "free one; `sdnctl ui` tells the URL; '' for none) "
                        "(default: %(default)s)")
    parser.add_argument("--registry", default=os.environ.get("SDNCTL_REGISTRY", ""),
                        metavar="HOST[:PORT]/NAMESPACE",
                        help="push `image load` archives to this registry and keep no image "
                        "blobs here (agents pull from it); its trust and credentials come "
                        "from --registry-config (default: $SDNCTL_REGISTRY)")
    parser.add_argument("--registry-config", default=None, metavar="FILE",
                        help="the registry file (default: $SDNCTL_REGISTRY_CONFIG or "
                        "<run dir>/registries.json)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    push_to = None
    if args.registry:
        try:
            push_to = PushTarget.parse(args.registry)
        except ValueError as e:
            parser.error(f"--registry: {e}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s controller %(levelname)s %(message)s")

    listen = args.listen or [f"unix:{paths.controller_socket()}"]
    tls_given = [bool(args.tls_cert), bool(args.tls_key), bool(args.tls_ca)]
    if any(tls_given) and not all(tls_given):
        parser.error("--tls-cert, --tls-key and --tls-ca go together")
    if args.crl and not all(tls_given):
        parser.error("--crl needs --tls-cert, --tls-key and --tls-ca")
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca) if all(tls_given) else None
    locks = take_locks(listen, args.pidfile)
    if isinstance(locks, str):
        parser.exit(1, f"sdnctl-controller: {locks}\n")
    access = etcd_access(parser, args)
    try:
        store = open_store(args.store, args.db, access)
    except ValueError as e:
        parser.error(f"--store: {e}")
    except (StoreUnavailable, EtcdError, ssl.SSLError) as e:
        parser.exit(1, f"sdnctl-controller: {e}\n")
    db = str(store.path) if isinstance(store, SqliteStore) else args.db
    if args.audit_log is None:
        args.audit_log = os.path.join(os.path.dirname(db) or ".", "audit.log") \
            if isinstance(store, SqliteStore) else ""
    audit = AuditLog(args.audit_log or None, max_bytes=args.audit_max_bytes,
                     keep=args.audit_keep)
    # Before it serves: a SIGTERM that comes as soon as it answers (a test, `down` right after
    # `up`) must stop it cleanly, not kill it with its locks held (the default action).
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    wake = signals.wakeup_pipe()  # (a signal another thread took wakes the main one)
    try:
        running = create_server(listen, store, max_workers=args.workers,
                                default_bridge=args.default_bridge or None,
                                lease_ttl=args.lease_ttl, subnet_quarantine=args.quarantine,
                                address_quarantine=args.address_quarantine,
                                sweep_interval=args.sweep_interval, tls=tls,
                                crl=args.crl or None, audit=audit,
                                heartbeat=REPLICA_HEARTBEAT if isinstance(store, EtcdStore)
                                else 0.0,
                                blob_dir=args.blob_dir or default_blob_dir(db),
                                gc_grace=args.gc_grace, gc_interval=args.gc_interval,
                                tls_dir=_tls_dir(), metrics_address=args.metrics,
                                http_address=args.http, registry=push_to,
                                registry_config=args.registry_config)
    except Invalid as e:
        parser.error(f"--default-bridge: {e.message}")
    except (ListenError, PkiError, LiveViewError) as e:
        parser.error(str(e))
    except ValueError as e:
        parser.error(f"--metrics/--http: {e}")
    except OSError as e:
        parser.error(f"--metrics {args.metrics} / --http {args.http}: {e.strerror or e}")
    except StoreUnavailable as e:
        parser.exit(1, f"sdnctl-controller: {e}\n")
    log.info("listening on %s (store: %s)", ", ".join(running.addresses),
             describe_store(store))
    if running.endpoints is not None and running.endpoints.metrics_url:
        log.info("metrics at %s", running.endpoints.metrics_url)
    if running.endpoints is not None and running.endpoints.ui_url:
        log.info("live view at %s", running.endpoints.ui_url)
    if running.revocations is not None:
        revocations = running.revocations
        signal.signal(signal.SIGHUP, lambda *_: revocations.reload())

    signals.wait_for_stop(wake, done)
    log.info("stopping")
    running.stop()  # no handler runs past this: the store and the audit log may close
    faults.point("stop")
    store.close()
    audit.close()
    for path, fd in locks:  # last: from here another controller may take the socket
        paths.release_lock(path, fd)
    log.info("stopped")
    return 0


def take_locks(listen: list[str], pidfile: str) -> list[tuple[str, int]] | str:
    """The locks of every unix socket in ``listen`` (``<socket>.lock``) and of ``pidfile``,
    held for the life of the process; or, when another process holds one, why we must not
    start (the locks taken so far are let go)."""
    wanted = [unix_path(a) + ".lock" for a in listen if is_unix(a)] + ([pidfile] if pidfile else [])
    held: list[tuple[str, int]] = []
    for path in wanted:
        fd = paths.hold_lock(path)
        if fd is None:
            for taken, taken_fd in held:
                paths.release_lock(taken, taken_fd)
            holder = paths.lock_holder(path)
            what = f"unix:{path.removesuffix('.lock')}" if path != pidfile else f"--pidfile {path}"
            return (f"another controller (pid {holder or 'unknown'}) already serves {what} "
                    f"(it holds the lock {path}); stop it first")
        held.append((path, fd))
    return held


if __name__ == "__main__":
    raise SystemExit(main())
