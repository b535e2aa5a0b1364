"""Talking to the controller from the CLI: dial it, and start one when none answers.

Every CLI channel to the controller is a :class:`sdnctl.api.wire.Channel` (gRPC without
grpcio's imports, a third of a `sdnctl run`; agents use it too, the controller's tests and
benchmarks dial with grpcio through ``sdnctl.api.grpcchannel``): a unix socket is plain (the
socket's mode is the access control), TCP is always mutual TLS with the files given, or those
of ``$SDNCTL_TLS_CERT``, ``$SDNCTL_TLS_KEY`` and ``$SDNCTL_TLS_CA``. Errors of a call are
:class:`wire.RpcError`.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from grpc_health.v1 import health_pb2

from sdnctl.api import paths, wire
from sdnctl.api.errors import CommandError, ControllerUnavailable
from sdnctl.api.tlsfiles import TLS_ENV, TlsFiles, tls_from_env
from sdnctl.v1 import sdnctl_pb2 as pb

if TYPE_CHECKING:  # the generated stubs import grpcio: for the types only
    from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

__all__ = ["TLS_ENV", "Client", "CommandError", "ControllerUnavailable", "connect",
           "poll_delays", "tls_from_env"]

#: A command that waits for agents polls the controller soon at first (an agent realises a
#: container in tens of milliseconds: a fixed 100 ms poll added 50 ms on average), then less
#: and less often, down to every POLL_MAX seconds.
POLL_FIRST, POLL_GROWTH, POLL_MAX = 0.005, 1.5, 0.1
#: Containers per CreateContainers request of `up`, and per DeleteContainers request of `down`
#: and `rm` (the controller takes 10,000 in one): on SQLite 100 take about 0.1 s; on etcd (each
#: container's IPAM a round of reads and a guarded write) a request of 1,000 outlived the 60 s
#: deadline of a call at 100 hosts x 10, one of 100 does not.
CREATE_BATCH = DELETE_BATCH = 100
CONTROLLER = pb.DESCRIPTOR.services_by_name["Controller"]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]


def poll_delays() -> Iterator[float]:
    """The pauses between two polls of a wait: POLL_FIRST, growing by POLL_GROWTH to POLL_MAX."""
    delay = POLL_FIRST
    while True:
        yield delay
        delay = min(delay * POLL_GROWTH, POLL_MAX)


def split_addresses(text: str) -> list[str]:
    """``unix:/a.sock,10.0.0.1:7000`` -> the controller addresses it lists, in order."""
    addresses = [a.strip() for a in text.split(",") if a.strip()]
    if not addresses:
        raise CommandError(f"no controller address in {text!r}")
    return addresses


class Failover:
    """A stub over several controller replicas: each call goes to the replica that answered
    last and moves on to the next one when a replica is UNAVAILABLE (down, or cut off from its
    store). Streams are not resumed here: their callers resume them (the agent's Watch does)."""

    def __init__(self, channels: list[wire.Channel],
                 stub: Callable[[wire.Channel], Any]) -> None:
        self._stubs = [stub(channel) for channel in channels]
        self._current = 0

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(request: Any, **kwargs: Any) -> Any:
            count = len(self._stubs)
            first = self._current
            for step in range(count):
                index = (first + step) % count
                try:
                    answer = getattr(self._stubs[index], name)(request, **kwargs)
                except wire.RpcError as e:
                    if e.code() != wire.StatusCode.UNAVAILABLE or step == count - 1:
                        raise
                    continue
                self._current = index
                return answer
            raise AssertionError("not reached")

        return call


class Client:
    def __init__(self, address: str | None = None, tls: TlsFiles | None = None) -> None:
        self.address = address or paths.controller_address()
        self.addresses = split_addresses(self.address)
        self.channels = [wire.open_channel(a, tls) for a in self.addresses]
        self.channel = self.channels[0]
        self.api = cast("pb_grpc.ControllerStub",
                        Failover(self.channels, lambda channel: wire.Stub(channel, CONTROLLER)))
        self.last_error = ""

    def healthy(self, timeout: float = 1.0) -> bool:
        """Whether some replica serves; CommandError when one answers but refuses us."""
        for channel in self.channels:
            stub: Any = wire.Stub(channel, HEALTH)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
            except wire.RpcError as e:
                if e.code() in (wire.StatusCode.UNAUTHENTICATED,
                                wire.StatusCode.PERMISSION_DENIED):
                    raise CommandError(f"the controller at {self.address} refused us: "
                                       f"{e.code().name}: {e.details()}") from None
                self.last_error = e.details()
                continue
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return True
        return False

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


def connect() -> Client:
    """A client of a controller that answers, or CommandError saying how to get one."""
    client = Client()
    try:
        if client.healthy():
            return client
    except CommandError:
        client.close()
        raise
    client.close()
    if not client.address.startswith("unix:"):  # e.g. a TLS handshake that failed
        # The controller refuses a certificate in the handshake without saying why (the
        # client sees the connection closed), so say what it checks.
        raise CommandError(f"no controller answers at {client.address}: {client.last_error} "
                           "(if it refused the TLS handshake: the client certificate must be "
                           "of the controller's CA, not expired and not revoked; see "
                           "`sdnctl pki ls`)")
    raise CommandError(f"no controller answers at {client.address} (start one with "
                       "`sdnctl up FILE` or `sdnctl-controller`)")


def controller_pidfile() -> str:
    return os.path.join(paths.run_dir(), "controller.pid")


def socket_lock(address: str) -> str:
    """The lock file a controller on the unix socket ``address`` holds while it lives."""
    return address.removeprefix("unix:").removeprefix("//") + ".lock"


def answers(address: str, timeout: float = 0.5) -> bool:
    """Whether a controller serves at ``address``, asked on a new channel (a channel that
    failed to connect waits out a reconnection backoff before it tries again)."""
    client = Client(address)
    try:
        return client.healthy(timeout=timeout)
    finally:
        client.close()


def start_controller(address: str, timeout: float = 60.0) -> int:
    """Start ``sdnctl-controller`` in the background on ``address``; return its PID once serving.

    Only one controller may hold a socket (its lock, :func:`socket_lock`): one that holds it but
    does not answer is starting or stopping, so this waits until it answers (its PID is
    returned) or exits (then ours starts). Ours may still lose the socket to another starter;
    then that one is waited for in the same way."""
    if "," in address or not address.startswith("unix:"):
        raise ControllerUnavailable(f"no controller answers at {address} (only a unix-socket "
                                    "controller is started automatically)")
    os.makedirs(paths.run_dir(), mode=0o755, exist_ok=True)
    log_path = os.path.join(paths.run_dir(), "controller.log")
    deadline = time.monotonic() + timeout
    while True:
        holder = paths.lock_holder(socket_lock(address))
        if holder is not None:
            if _serving_or_gone(address, holder, deadline, log_path):
                return holder
            continue
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sdnctl.controller.server", "--listen", address,
                 "--db", paths.controller_db(), "--pidfile", controller_pidfile()],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        if _serving_or_gone(address, proc.pid, deadline, log_path, proc):
            return proc.pid
        proc.wait()
        if paths.lock_holder(socket_lock(address)) is None:
            raise ControllerUnavailable(
                f"the controller exited with status {proc.returncode}; see {log_path}")
        # another controller took the socket before ours: wait for it instead


def _serving_or_gone(address: str, pid: int, deadline: float, log_path: str,
                     proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Until the controller ``pid`` answers at ``address`` (True) or has let go of the socket's
    lock (False); ControllerUnavailable (and ``proc`` killed) at ``deadline``."""
    with contextlib.ExitStack() as stack:
        try:
            pidfd = os.pidfd_open(pid) if pid else -1
        except ProcessLookupError:
            pidfd = -1
        if pidfd >= 0:
            stack.callback(os.close, pidfd)
        delays = poll_delays()
        while True:
            if answers(address):
                return True
            if proc is not None and proc.poll() is not None:
                return False
            if proc is None and paths.lock_holder(socket_lock(address)) != pid:
                return False
            if time.monotonic() > deadline:
                break
            if pidfd >= 0:  # wakes at once when the process exits
                select.select([pidfd], [], [], next(delays))
            else:
                time.sleep(next(delays))
    if proc is not None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    raise ControllerUnavailable(f"the controller (pid {pid}) did not answer at {address}; "
                                f"see {log_path}")


def stop_controller(pid: int, timeout: float = 60.0) -> bool:
    """Stop the controller ``pid`` (SIGTERM, and SIGKILL if it has not exited after
    ``timeout`` seconds) and return once it has exited, so that its socket and lock are gone
    (False: it would not exit)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        if not _is_controller(pid):  # the PID changed hands; the pidfd holds it now
            return True
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, sig)
            if select.select([pidfd], [], [], wait)[0]:  # readable: it has exited
                return True
        return False
    finally:
        os.close(pidfd)


def _is_controller(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"sdnctl.controller.server" in f.read()
    except OSError:
        return False


def started_controller_pid() -> int | None:
    """The PID of a controller that ``sdnctl up`` started and that still runs, if any."""
    try:
        with open(controller_pidfile()) as f:
            pid = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _is_controller(pid) else None
