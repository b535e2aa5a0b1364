"""The controller process: one gRPC server with the Controller and HostSync services.

It listens on a unix socket by default (``/run/sdnctl/controller.sock``, mode 0600: only root
talks to it), serves gRPC health checking and server reflection, and keeps its state in one
SQLite file. At start it makes sure the default bridge network exists (Docker's ``bip``):
containers created without a network join it. A sweeper thread frees expired idle leases, ends
quarantines and trims the IPAM history every ``sweep_interval`` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sdnctl import paths
from sdnctl.controller import gc, ipam
from sdnctl.controller.images import Images, default_blob_dir
from sdnctl.controller.servicers import (
    Connections,
    ControllerServicer,
    ErrorInterceptor,
    HostSyncServicer,
)
from sdnctl.controller.state import State
from sdnctl.controller.store.base import Store
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.model import Invalid
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

log = logging.getLogger("sdnctl.controller")

#: Docker's default bridge subnet.
DEFAULT_BRIDGE_SUBNET = "172.17.0.0/16"

SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["Controller"].full_name,
    pb.DESCRIPTOR.services_by_name["HostSync"].full_name,
)


@dataclass
class RunningServer:
    server: grpc.Server
    address: str  # what clients dial: unix:/path or host:port
    stopping: threading.Event

    sweeper: threading.Thread | None = None
    collector: threading.Thread | None = None
    scratch: str = ""  # a blob directory made for this server alone, removed when it stops

    def stop(self, grace: float = 1.0) -> None:
        self.stopping.set()
        self.server.stop(grace).wait()
        for thread in (self.sweeper, self.collector):
            if thread is not None:
                thread.join()
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


#: Worker threads of the gRPC server. Every agent's Watch stream holds one for as long as it is
#: open, so this bounds the number of hosts (32 capped a lab at about 31 hosts).
DEFAULT_WORKERS = 512


def create_server(address: str, store: Store, max_workers: int = DEFAULT_WORKERS,
                  progress_interval: float = 10.0,
                  default_bridge: str | None = None,
                  lease_ttl: int = ipam.DEFAULT_TIMERS.lease_ttl,
                  subnet_quarantine: int = ipam.DEFAULT_TIMERS.subnet_quarantine,
                  address_quarantine: int = ipam.DEFAULT_TIMERS.address_quarantine,
                  sweep_interval: float = 10.0,
                  clock: Callable[[], float] = time.time,
                  blob_dir: str | None = None,
                  gc_grace: int = gc.DEFAULT_GRACE,
                  gc_interval: float = 0.0) -> RunningServer:
    """Build and start a server on ``address``: ``unix:/path`` or ``host:port`` (port 0 picks).

    ``default_bridge``: the subnet of the default bridge network, made before serving (None: no
    default bridge; containers must name their network). ``lease_ttl``: seconds a host's lease
    lives without renewal; ``subnet_quarantine``/``address_quarantine``: seconds a freed subnet
    or address waits before someone else may take it; ``sweep_interval``: how often expired
    leases are freed (0: never, for tests that call ``State.sweep`` themselves). ``clock``:
    unix seconds (tests pass a fake one). ``blob_dir``: where image blobs are kept (None: a
    temporary directory removed when the server stops). ``gc_grace``: seconds between the two
    sightings IPAM garbage collection needs; ``gc_interval``: how often it runs on its own (0:
    only when asked, ``GcIpam``).
    """
    stopping = threading.Event()
    timers = ipam.Timers(lease_ttl=lease_ttl, subnet_quarantine=subnet_quarantine,
                         address_quarantine=address_quarantine)
    state = State(store, timers, clock)
    if default_bridge:
        state.ensure_default_bridge(default_bridge)
    connections = Connections()
    scratch = "" if blob_dir else tempfile.mkdtemp(prefix="sdnctl-blobs-")
    images = Images(store, blob_dir or scratch)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         interceptors=[ErrorInterceptor()])
    pb_grpc.add_ControllerServicer_to_server(
        ControllerServicer(state, connections, images, gc_grace), server)
    pb_grpc.add_HostSyncServicer_to_server(
        HostSyncServicer(state, connections, stopping, images, progress_interval), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    if address.startswith("unix:"):
        path = address.removeprefix("unix:").removeprefix("//")
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket of a dead controller
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others can dial
        try:
            server.add_insecure_port(address)
        finally:
            os.umask(old_umask)
        dial = f"unix:{path}"
    else:
        port = server.add_insecure_port(address)
        dial = f"{address.rsplit(':', 1)[0]}:{port}"
    server.start()
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    running = RunningServer(server, dial, stopping, scratch=scratch)
    if sweep_interval > 0:
        running.sweeper = threading.Thread(target=sweep_forever, name="ipam-sweeper",
                                           args=(state, sweep_interval, stopping), daemon=True)
        running.sweeper.start()
    if gc_interval > 0:
        running.collector = threading.Thread(
            target=gc.collect_forever, name="ipam-gc", daemon=True,
            args=(state, gc_interval, gc_grace, connections.connected, stopping))
        running.collector.start()
    return running


def open_store(kind: str, db_path: str) -> Store:
    if kind == "memory":
        return MemoryStore()
    return SqliteStore(db_path)


def _seconds(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdnctl-controller", description=__doc__)
    parser.add_argument("--listen", default=f"unix:{paths.controller_socket()}",
                        help="unix:/path or host:port (default: %(default)s)")
    parser.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
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
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s controller %(levelname)s %(message)s")

    store = open_store(args.store, args.db)
    try:
        running = create_server(args.listen, store, max_workers=args.workers,
                                default_bridge=args.default_bridge or None,
                                lease_ttl=args.lease_ttl, subnet_quarantine=args.quarantine,
                                address_quarantine=args.address_quarantine,
                                sweep_interval=args.sweep_interval,
                                blob_dir=args.blob_dir or default_blob_dir(args.db),
                                gc_grace=args.gc_grace, gc_interval=args.gc_interval)
    except Invalid as e:
        parser.error(f"--default-bridge: {e.message}")
    if args.pidfile:
        paths.write_atomic(args.pidfile, f"{os.getpid()}\n")
    log.info("listening on %s (store: %s)", running.address,
             args.db if args.store == "sqlite" else "memory")

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    log.info("stopping")
    running.stop()
    store.close()
    if args.listen.startswith("unix:"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.listen.removeprefix("unix:").removeprefix("//"))
    if args.pidfile:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.pidfile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
