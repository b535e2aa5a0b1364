"""The agent's CNI service (issue 17): what the ``sdnctl-cni`` plugin asks of its host's agent.

The plugin (``sdnctl/cni/plugin.py``) is a process per call and stays light; everything else is
here, in the long-lived agent. The agent listens on an ABSTRACT unix socket (``@sdnctl-agent``)
inside its host's network namespace: abstract names are per namespace, so the plugin run by a
runtime in that namespace finds this agent with no configuration. Only root may call (the peer's
credentials are checked: abstract sockets have no file permissions).

One request per connection, one JSON line each way. A CNI attachment is a container of the
controller's model without a process of ours: its namespace is the runtime's (``CNI_NETNS``),
its owner the runtime's container ID. Who does what:

- ``ADD``: refuse if ``CNI_IFNAME`` exists in the namespace; ask the controller to record the
  attachment (``HostSync.Attach``: an address from this host's lease of the network), making
  the veth pair meanwhile for a new attachment (``links.prepare_veth``: making it is also the
  check that ``CNI_IFNAME`` is free; the record is dropped again when it was not); build it
  (the same kernel code as for any container: the veth into the namespace, address, route, the
  firewall's guard) and answer the CNI result. Built at once when it can be (the fast path,
  ``AgentSide.attach_now``: the reply of Attach carries all the attachment needs, so neither
  the Watch stream's round trip nor a pass is waited for; the reconciler's thread builds it
  between two passes, and the pass after finds nothing to do), else by the reconciler's pass,
  waited for (the first attachment of a network on this host: its lease and bridge come with
  that pass; network policy; see ``Reconciler.attach_now``). Anything failing half-way is
  rolled back: the veth removed, the record dropped (its address with it).
- ``DEL``: ``HostSync.Detach`` (unknown: fine) while a thread of this service removes its
  veth (the kernel's slowest step); the answer waits for both, as the reference plugins' DEL
  waits for the veth (a runtime may reuse the namespace at once): for the kernel to announce
  both ends gone from their namespaces (``links.DeletionWatch``, ~0.5 ms in), not for the
  rest of the teardown (~20 ms of grace periods, which the removing thread waits out); the
  reconciler's next pass removes the guard, and the veth itself should the agent stop first.
  An ADD of the same attachment waits for the reconciler to have seen the DEL (a pass of an
  older revision may still rebuild the veth meanwhile).
- ``CHECK``: the record, the interface, its address and default route against ``prevResult``;
  published ports against ``runtimeConfig.portMappings`` and their DNAT rules.
- ``STATUS``: whether this agent is connected to a controller; ``GC``: detach this network's
  attachments that are not in ``cni.dev/valid-attachments``.
- A namespace that disappeared without a DEL (the runtime forgot it) is detached here, when the
  reconciler reports it gone (:meth:`CniService.forget_gone`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.desired import DesiredContainer, DesiredNetwork, DesiredState, container_from_pb
from agent.kernel import netns
from agent.kernel.firewall import published_port_comments
from agent.kernel.links import (
    DeletionWatch,
    KernelError,
    PreparedVeth,
    peek_host_link,
    peek_interface,
    remove_link_now,
)
from agent.names import bridge_name, container_mac, veth_name
from sdnctl.api import wire
from sdnctl.api.fields import check_name, port_text
from sdnctl.api.model import STATE_ERROR, STATE_RUNNING, ContainerStatus, Invalid, PortMapping
from sdnctl.cni import plugin
from sdnctl.cni.plugin import (
    ERR_CONFIG,
    ERR_ENV,
    ERR_INTERNAL,
    ERR_NOT_AVAILABLE,
    ERR_TRY_AGAIN,
    ERR_UNKNOWN_CONTAINER,
    ERR_UNSUPPORTED_FIELD,
    SUPPORTED_VERSIONS,
    CniError,
)
from sdnctl.v1 import sdnctl_pb2 as pb

if TYPE_CHECKING:  # (the generated stubs import grpcio: the agent calls through wire)
    from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

log = logging.getLogger("sdnctl.agent.cni")

ADD_TIMEOUT = 20.0  # seconds for the controller and the reconciler to realise an attachment
DEL_TIMEOUT = 10.0
REQUEST_MAX = 1 << 20
RPC_TIMEOUT = 10.0
SHIM_PREFIX = b'{"shim": 1,'  # the C shim's calls (see _shim_answer)

#: gRPC codes that mean "the controller may answer later": CNI's 11, the runtime retries.
TRANSIENT = (wire.StatusCode.UNAVAILABLE, wire.StatusCode.DEADLINE_EXCEEDED,
             wire.StatusCode.ABORTED)


def attachment_name(container_id: str, ifname: str) -> str:
    """The controller's name of an attachment: stable per (container ID, interface)."""
    return "cni-" + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:16]


def rpc_error(e: wire.RpcError, what: str) -> CniError:
    code = e.code()
    details = e.details()
    if code in TRANSIENT:
        return CniError(ERR_TRY_AGAIN, f"{what}: the controller is unreachable; try again later",
                        str(details))
    if code in (wire.StatusCode.INVALID_ARGUMENT, wire.StatusCode.NOT_FOUND,
                wire.StatusCode.FAILED_PRECONDITION):
        return CniError(ERR_CONFIG, f"{what}: {details}")
    return CniError(ERR_INTERNAL, f"{what}: {details}", str(code))


class Realised:
    """What the reconciler realised last (the desired revision and the statuses of its pass):
    CNI calls wait on it for their attachment to be built or removed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.revision = 0
        self.statuses: dict[str, ContainerStatus] = {}

    def publish(self, revision: int, statuses: list[ContainerStatus]) -> None:
        with self._cond:
            self.revision = revision
            self.statuses = {s.name: s for s in statuses}
            self._cond.notify_all()

    def wait(self, ready: Callable[[int, dict[str, ContainerStatus]], bool],
             timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: ready(self.revision, self.statuses), timeout)


@dataclass
class AgentSide:
    """What the service needs of the agent (agent/main.py's Agent provides it)."""

    host: str
    controllers: list[str]
    sync: Callable[[], pb_grpc.HostSyncStub]
    desired: Callable[[], DesiredState]  # a consistent copy
    connected: Callable[[], bool]  # a Watch stream is open
    realised: Realised
    resolver: bool = False  # the agent answers DNS on each bridge's gateway (agent/dns.py)
    # Removes one host-side veth of ours at once, from the calling thread (DEL: see
    # CniService.delete; links.remove_link_now); None: DEL waits for the reconciler's pass.
    remove_veth: Callable[[str], object] | None = None
    # CNI ADD's fast path: builds the attachment (recorded at the given revision) at once, on
    # the reconciler's thread (Reconciler.attach_now), from its prepared pair when there is
    # one; False when a pass must build it; raises when a step failed (then the veth is gone
    # and the attachment is no longer desired).
    attach_now: Callable[[DesiredContainer, int, PreparedVeth | None], bool] | None = None
    # Makes an attachment's pair while the controller records it (links.prepare_veth: host
    # side, bridge, MTU, namespace, interface); None: the fast path makes it afterwards.
    prepare_veth: Callable[[str, str, int, str, str], PreparedVeth | None] | None = None
    # Held while an ADD waits for the controller's record and, built at once, makes its
    # answer, and while a DEL is under way: the reconciler's passes wait (agent/main.py).
    hold_passes: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext


class CniService:
    def __init__(self, side: AgentSide, address: str) -> None:
        self.side = side
        self.address = address
        self.sock: socket.socket | None = None
        self._forgetting: set[str] = set()
        # attachment -> the revision of its Detach, while the reconciler may not have seen it
        self._removing: dict[str, int] = {}
        # attachment -> set when its veth, queued for removal by a DEL, is gone
        self._veths_going: dict[str, threading.Event] = {}
        # attachment -> the revision of its Detach (inf until the controller answered), from
        # the start of its DEL until the state passes are given has seen it (``leaving``)
        self._leaving: dict[str, float] = {}
        self._veth_queue: queue.SimpleQueue[
            tuple[str, str, threading.Event, DeletionWatch | None]] = \
            queue.SimpleQueue()
        self._lock = threading.Lock()

    # -- the socket ---------------------------------------------------------------------------

    def start(self) -> bool:
        """Bind and serve in a daemon thread; False (logged) when the name is taken."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.address)
        except OSError as e:
            sock.close()
            log.warning("CNI service off: cannot bind %s: %s", self._where(), e)
            return False
        sock.listen(64)
        self.sock = sock
        threading.Thread(target=self._serve, name="cni", daemon=True).start()
        if self.side.remove_veth is not None:
            threading.Thread(target=self._remove_veths, name="cni-veths", daemon=True).start()
        log.info("CNI service on %s", self._where())
        return True

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _where(self) -> str:
        return "@" + self.address[1:] if self.address.startswith("\0") else self.address

    def _serve(self) -> None:
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), name="cni-call",
                             daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            shim = False
            try:
                data = self._read(conn)
                shim = data.startswith(SHIM_PREFIX)
                reply = self._shim_answer(data) if shim else \
                    json.dumps(self._answer(data)).encode() + b"\n"
            except Exception as e:  # an answer, always: the plugin must not hang nor guess
                if isinstance(e, CniError):
                    error = e
                else:
                    log.warning("CNI call failed: %s", e, exc_info=True)
                    error = CniError(ERR_INTERNAL, f"sdnctl agent: {e}", type(e).__name__)
                reply = b"1\n" + json.dumps(error.to_json(SUPPORTED_VERSIONS[-1])).encode() + \
                    b"\n" if shim else json.dumps({"error": {
                        "code": error.code, "msg": error.msg, "details": error.details}}).encode()
            try:
                conn.sendall(reply)
            except OSError as e:
                log.warning("could not answer a CNI call: %s", e)

    def _read(self, conn: socket.socket) -> bytes:
        """The whole call (the caller shuts its side down), from root only."""
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != 0:
            raise CniError(ERR_INTERNAL, "only root may call the sdnctl agent's CNI service "
                           f"(uid {uid})")
        conn.settimeout(10)
        data = b""
        while len(data) <= REQUEST_MAX and (chunk := conn.recv(65536)):
            data += chunk
        return data

    def _shim_answer(self, data: bytes) -> bytes:
        """A call from the C shim (sdnctl/cni/shim.c): a header line with the environment, then
        stdin as the runtime gave it; the answer is the exit status and what to print."""
        header, _, stdin = data.partition(b"\n")
        version = plugin.error_version(stdin)
        try:
            env = json.loads(header).get("env")
            if not isinstance(env, dict):
                raise CniError(ERR_INTERNAL, "bad request from the CNI shim: no environment")
            request, version = plugin.agent_request({k: str(v) for k, v in env.items()}, stdin)
            result = self._timed(request)
        except CniError as e:
            return b"1\n" + plugin.dumps(e.to_json(version)).encode() + b"\n"
        return b"0\n" + (plugin.dumps(result).encode() + b"\n" if result is not None else b"")

    def _answer(self, data: bytes) -> dict[str, Any]:
        try:
            request = json.loads(data)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as e:
            return {"error": {"code": ERR_INTERNAL, "msg": f"bad request: {e}", "details": ""}}
        try:
            result = self._timed(request)
        except CniError as e:
            return {"error": {"code": e.code, "msg": e.msg, "details": e.details}}
        return {"result": result} if result is not None else {}

    def _timed(self, request: dict[str, Any]) -> dict[str, Any] | None:
        started = time.monotonic()
        try:
            result = self.handle(request)
        except CniError as e:
            log.info("CNI %s %s: error %d %s", request.get("command"),
                     request.get("containerID"), e.code, e.msg)
            raise
        log.info("CNI %s %s %s: done in %.0f ms", request.get("command"),
                 request.get("containerID"), request.get("ifname"),
                 (time.monotonic() - started) * 1000)
        return result

    # -- the commands -------------------------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any] | None:
        conf = request.get("config")
        if not isinstance(conf, dict):
            raise CniError(ERR_CONFIG, "no network configuration")
        controller = conf.get("controller")
        if controller and controller not in self.side.controllers:
            raise CniError(ERR_CONFIG, f"controller: this host's agent uses "
                           f"{','.join(self.side.controllers)}, not {controller}")
        network = str(conf.get("network") or conf.get("name") or "")
        try:
            check_name(network, "network")
        except Invalid as e:
            raise CniError(ERR_CONFIG, str(e)) from None
        command = request.get("command")
        if command == "ADD":
            return self.add(request, conf, network)
        if command == "DEL":
            self.delete(request)
            return None
        if command == "CHECK":
            self.check(request, conf, network)
            return None
        if command == "STATUS":
            if not self.side.connected():
                raise CniError(ERR_NOT_AVAILABLE, "the sdnctl agent of this host is not "
                               "connected to a controller")
            return None
        if command == "GC":
            self.gc(conf, network)
            return None
        raise CniError(ERR_ENV, f"CNI_COMMAND: {command!r} is not served by the agent")

    def add(self, request: dict[str, Any], conf: dict[str, Any],
            network: str) -> dict[str, Any]:
        container_id, ifname, path = (str(request.get(k) or "") for k in
                                      ("containerID", "ifname", "netns"))
        if not netns.is_netns(path):
            raise CniError(ERR_ENV, f"CNI_NETNS: {path!r} is not a network namespace")
        name = attachment_name(container_id, ifname)
        desired = self.side.desired()
        net = desired.networks.get(network)
        # A new attachment the fast path will build (no policy to wait for): its pair is made
        # while the controller records it, and making it tells whether CNI_IFNAME exists.
        early = (self.side.prepare_veth is not None and net is not None
                 and not desired.policy.policies and name not in desired.containers
                 and not self._in_removal(name))
        if not early:
            self._interface_free(path, ifname, name)
            stale = desired.containers.get(name)
            if stale is not None and stale.cni_netns != path and \
                    not netns.is_netns(stale.cni_netns):
                # The same container and interface in a new namespace, and the old one gone
                # without a DEL (a runtime restarted it): that attachment is over.
                self._detach(name, wait=True)
        args = str(request.get("args") or "")
        spec = pb.Container(name=name, host=self.side.host, network=network, interface=ifname,
                            fixed_ip=requested_ip(conf, args), ports=port_mappings(conf),
                            aliases=requested_aliases(conf, network, args),
                            cni=pb.CniOwner(container_id=container_id, netns=path))
        if requested_mac(conf, str(request.get("args") or "")):
            raise CniError(ERR_UNSUPPORTED_FIELD, "mac: sdnctl derives each container's MAC "
                           "address from its IP address (its anti-spoofing guard knows it)")
        view: pb.Container | None = None
        prepared: PreparedVeth | None = None
        try:
            # Built at once (the fast path), the answer is made before passes may run again
            # (they would hold the interpreter meanwhile: see AgentSide.hold_passes).
            with self.side.hold_passes():
                call = self.side.sync().Attach.future(
                    pb.AttachRequest(host=self.side.host, container=spec), timeout=RPC_TIMEOUT)
                if early and net is not None:
                    prepared = self._prepare(net.name, net.mtu, name, ifname, path)
                try:
                    view = call.result()
                except wire.RpcError as e:
                    raise rpc_error(e, f"network {network!r}") from None
                if early and prepared is None:
                    self._interface_free(path, ifname, name)
                if self._attach_now(view, prepared):
                    return self.result(conf["cniVersion"], view, ifname, path, prepared, net)
            status = self._wait_realised(name, view.revision)
            if status is None:
                raise CniError(ERR_TRY_AGAIN, f"the agent did not build {ifname!r} within "
                               f"{ADD_TIMEOUT:.0f} s")
            if status.state != STATE_RUNNING:
                raise CniError(ERR_INTERNAL, f"could not attach {ifname!r}: {status.message}")
            return self.result(conf["cniVersion"], view, ifname, path)
        except BaseException:
            if view is not None:
                self._detach(name, wait=True)  # roll back: record and veth
            if prepared is not None:
                try:
                    remove_link_now(prepared.host_ifname)  # (gone already when it was built)
                except KernelError as e:
                    log.warning("could not remove %s: %s", prepared.host_ifname, e)
            raise

    def _prepare(self, network: str, mtu: int, name: str, ifname: str,
                 path: str) -> PreparedVeth | None:
        """The attachment's pair, made while the controller records it (``links.prepare_veth``);
        None when it could not be (the interface exists, the bridge does not yet...): the
        caller then looks, and the fast path or a pass makes the pair."""
        assert self.side.prepare_veth is not None
        try:
            return self.side.prepare_veth(veth_name(name, ifname), bridge_name(network), mtu,
                                          path, ifname)
        except KernelError as e:
            log.warning("could not prepare the veth of %s: %s", name, e)
            return None

    def _interface_free(self, path: str, ifname: str, name: str) -> None:
        """Raise the CNI error when ``ifname`` exists in ``path`` (ADD must fail then). A DEL
        of the same attachment, or of another in this namespace, may still be removing its
        veth: that is waited for (and a pass of an older revision that rebuilt it)."""
        try:
            present = peek_interface(path, ifname)
            going = self._veths_gone(everything=present is not None, name=name)
            if present is not None and (self._settle_removal(name) or going):
                present = peek_interface(path, ifname)
        except KernelError as e:
            raise CniError(ERR_ENV, f"CNI_NETNS: {e}") from None
        if present is not None:
            raise CniError(ERR_INTERNAL, f"interface {ifname!r} already exists in {path}")

    def _in_removal(self, name: str) -> bool:
        """Whether a DEL of attachment ``name`` is still being realised here."""
        with self._lock:
            return name in self._removing or name in self._veths_going

    def _attach_now(self, view: pb.Container, prepared: PreparedVeth | None) -> bool:
        """The fast path (``AgentSide.attach_now``); False when the reconciler's pass must
        build the attachment. A step that fails is a CNI error (the caller rolls back)."""
        if self.side.attach_now is None:
            return False
        try:
            return self.side.attach_now(container_from_pb(view), view.revision, prepared)
        except CniError:
            raise
        except Exception as e:
            raise CniError(ERR_INTERNAL, f"could not attach {view.interface!r}: {e}"
                           + (f": {e.__cause__}" if e.__cause__ else ""),
                           type(e).__name__) from None

    def _wait_realised(self, name: str, revision: int) -> ContainerStatus | None:
        found: list[ContainerStatus] = []

        def ready(realised: int, statuses: dict[str, ContainerStatus]) -> bool:
            status = statuses.get(name)
            if realised < revision or status is None or \
                    status.state not in (STATE_RUNNING, STATE_ERROR):
                return False
            found.append(status)
            return True

        return found[-1] if self.side.realised.wait(ready, ADD_TIMEOUT) else None

    def result(self, version: str, view: pb.Container, ifname: str, path: str,
               prepared: PreparedVeth | None = None,
               net: DesiredNetwork | None = None) -> dict[str, Any]:
        """The CNI result, in the caller's version: host veth, container side, address, route.
        The host side's MAC is read unless it was ``prepared``; the network's MTU and DNS
        domain come from ``net`` (else the desired state)."""
        host_if = veth_name(view.name, ifname)
        host_mac = prepared.host_mac if prepared is not None else ""
        if not host_mac:
            try:
                host = peek_host_link(host_if)
            except KernelError:
                host = None
            host_mac = (host.mac or "") if host is not None else ""
        if net is None or net.name != view.network:
            net = self.side.desired().networks.get(view.network)
        interfaces: list[dict[str, Any]] = [
            {"name": host_if, "mac": host_mac, "sandbox": ""},
            {"name": ifname, "mac": container_mac(view.ip or view.ip6), "sandbox": path}]
        if version == "1.1.0" and net is not None:
            for interface in interfaces:
                interface["mtu"] = net.mtu
        ips: list[dict[str, Any]] = []
        routes: list[dict[str, Any]] = []
        if view.ip:  # (none on an IPv6-only network)
            ip: dict[str, Any] = {"address": f"{view.ip}/{view.prefixlen}",
                                  "gateway": view.gateway, "interface": 1}
            if version == "0.4.0":
                ip["version"] = "4"
            ips, routes = [ip], [{"dst": "0.0.0.0/0", "gw": view.gateway}]
        if view.ip6:  # dual-stack (issue 20): the IPv6 address and default route too
            ip6: dict[str, Any] = {"address": f"{view.ip6}/{view.prefixlen6}",
                                   "gateway": view.gateway6, "interface": 1}
            if version == "0.4.0":
                ip6["version"] = "6"
            ips.append(ip6)
            routes.append({"dst": "::/0", "gw": view.gateway6})
        dns: dict[str, Any] = {}
        if self.side.resolver:  # the agent's resolver: names of the network, then upstream
            dns["nameservers"] = [view.gateway or view.gateway6]
            if net is not None and net.dns_domain:
                dns["domain"] = net.dns_domain
                dns["search"] = [net.dns_domain]
        return {"cniVersion": version, "interfaces": interfaces, "ips": ips, "routes": routes,
                "dns": dns}

    def delete(self, request: dict[str, Any]) -> None:
        """The controller forgets the attachment; when the agent gave ``remove_veth``, this
        service's thread removes its veth meanwhile (the peer in the runtime's namespace goes
        with it; the reconciler's next pass takes the firewall guard away and finds nothing
        else to do), and the answer waits for both; else the reconciler's pass removes it,
        waited for. A DEL of an attachment the controller does not know succeeds (its veth,
        should one be left, goes too); one the controller could not hear fails, and the
        runtime tries again (a pass rebuilds the veth meanwhile, if its namespace lives on)."""
        ifname = str(request.get("ifname") or "")
        name = attachment_name(str(request.get("containerID") or ""), ifname)
        if self.side.remove_veth is None:
            self._detach(name, wait=True, strict=True)
            return
        veth = veth_name(name, ifname)
        gone = threading.Event()
        try:
            watch: DeletionWatch | None = DeletionWatch(veth)
        except KernelError as e:
            log.warning("DEL of %s waits for its veth's whole removal: %s", name, e)
            watch = None
        with self._lock:
            self._veths_going[name] = gone
            self._leaving[name] = math.inf
        with self.side.hold_passes():  # (a pass's nftables commit would slow the removal)
            try:
                # Removing a veth costs the kernel ~25 ms (grace periods): it starts now, not
                # after the controller's answer.
                self._veth_queue.put((name, veth, gone, watch))
                revision = None
                try:
                    revision = self._detach(name, wait=False, strict=True)
                finally:
                    with self._lock:
                        if revision is None:  # (unknown to the controller, or not heard)
                            self._leaving.pop(name, None)
                        else:
                            self._leaving[name] = revision
                if revision is not None:
                    with self._lock:
                        seen = self.side.realised.revision  # (what the reconciler saw)
                        self._removing = {n: r for n, r in self._removing.items() if r > seen}
                        self._removing[name] = revision
                # The answer waits for the interface to go, as the reference plugins' DEL
                # does (a runtime may look into, or reuse, its namespace at once): until the
                # kernel announces both ends gone from their namespaces, their names free,
                # not for the rest of the teardown (its grace periods: ~20 ms more, in the
                # removing thread; an ADD of the same attachment waits for that).
                if watch is None:
                    gone.wait(DEL_TIMEOUT)
                elif not watch.wait(DEL_TIMEOUT):
                    log.warning("DEL of %s: its veth was not removed within %.0f s", name,
                                DEL_TIMEOUT)
            finally:
                if watch is not None:
                    watch.close()

    def leaving(self, revision: int) -> set[str]:
        """The attachments a DEL removes that a desired state of ``revision`` may still list:
        from the DEL's start until that state has the controller's forget. A pass must leave
        them out (a resync between the veth's removal and the forget's arrival on the stream
        would build the veth again, and the runtime's next ADD find its interface taken). A DEL
        the controller refused leaves its attachment to the passes again."""
        with self._lock:
            self._leaving = {n: r for n, r in self._leaving.items() if r > revision}
            return set(self._leaving)

    def _remove_veths(self) -> None:
        """The thread that removes the veths of DELs (``AgentSide.remove_veth``), in order."""
        remove = self.side.remove_veth
        assert remove is not None
        while True:
            name, veth, gone, watch = self._veth_queue.get()
            try:
                remove(veth)
            except Exception as e:  # the reconciler's pass removes what is not wanted
                log.warning("could not remove the veth of %s at once (the next pass does): %s",
                            name, e)
            finally:
                if watch is not None:
                    watch.finished()
                with self._lock:
                    if self._veths_going.get(name) is gone:
                        del self._veths_going[name]
                gone.set()

    def _veths_gone(self, everything: bool, name: str = "") -> bool:
        """Wait until the veths DELs queued for removal are gone (``everything``), or that of
        attachment ``name``; True when there was one to wait for."""
        with self._lock:
            events = list(self._veths_going.values()) if everything else \
                [e for n, e in self._veths_going.items() if n == name]
        for event in events:
            event.wait(DEL_TIMEOUT)
        return bool(events)

    def _settle_removal(self, name: str) -> bool:
        """Wait, if ``name`` was detached here lately, until the reconciler has seen it go (an
        ADD right after its DEL); True when there was something to wait for."""
        with self._lock:
            revision = self._removing.pop(name, None)
        if revision is None:
            return False
        self.side.realised.wait(
            lambda realised, statuses: realised >= revision and name not in statuses,
            DEL_TIMEOUT)
        return True

    def _detach(self, name: str, wait: bool, strict: bool = False) -> int | None:
        """Forget an attachment and (``wait``) see the reconciler remove its veth. ``strict``
        raises CNI errors; else they are logged (a rollback, a GC). Returns the revision of the
        removal (None: there was nothing to forget, or it failed)."""
        try:
            revision = self.side.sync().Detach(pb.DetachRequest(host=self.side.host, name=name),
                                               timeout=RPC_TIMEOUT).revision
        except wire.RpcError as e:
            if e.code() == wire.StatusCode.NOT_FOUND:
                return None  # DEL of an unknown attachment succeeds
            if strict:
                raise rpc_error(e, f"attachment {name}") from None
            log.warning("could not detach %s: %s", name, e.details())
            return None
        if wait and not self.side.realised.wait(
                lambda realised, statuses: realised >= revision and name not in statuses,
                DEL_TIMEOUT) and strict:
            raise CniError(ERR_TRY_AGAIN, f"the agent did not remove attachment {name} within "
                           f"{DEL_TIMEOUT:.0f} s")
        log.info("attachment %s detached", name)
        return revision

    def check(self, request: dict[str, Any], conf: dict[str, Any], network: str) -> None:
        container_id, ifname, path = (str(request.get(k) or "") for k in
                                      ("containerID", "ifname", "netns"))
        name = attachment_name(container_id, ifname)
        ctr = self.side.desired().containers.get(name)
        if ctr is None or ctr.cni_netns != path:
            raise CniError(ERR_UNKNOWN_CONTAINER, f"no sdnctl attachment of {container_id} "
                           f"{ifname} in {path}")
        if ctr.target != network:
            raise CniError(ERR_CONFIG, f"attachment {name} is on network {ctr.target!r}, "
                           f"not {network!r}")
        problems = check_attachment(ctr, path, conf.get("prevResult"))
        net = self.side.desired().networks.get(ctr.target)
        if net is not None and not net.internal:  # (an internal network publishes nothing)
            problems += check_ports(ctr, conf, published_port_comments())
        if problems:
            raise CniError(ERR_INTERNAL, f"CHECK of {ifname} in {path}: " + "; ".join(problems))

    def gc(self, conf: dict[str, Any], network: str) -> None:
        valid = conf.get("cni.dev/valid-attachments", [])
        if not isinstance(valid, list):
            raise CniError(ERR_CONFIG, "cni.dev/valid-attachments: expected a list")
        keep = {attachment_name(str(a.get("containerID", "")), str(a.get("ifname", "")))
                for a in valid if isinstance(a, dict)}
        for name, ctr in sorted(self.side.desired().containers.items()):
            if ctr.cni_netns and ctr.target == network and name not in keep:
                log.info("CNI GC: %s (%s) is not a valid attachment", name, ctr.cni_id)
                self._detach(name, wait=False, strict=True)

    def forget_gone(self, names: list[str]) -> None:
        """Attachments whose namespace is gone (a DEL the runtime never sent): detach them, in a
        thread of their own (the reconciler must not wait on the controller)."""
        with self._lock:
            new = [n for n in names if n not in self._forgetting]
            self._forgetting |= set(new)
        for name in new:
            log.warning("attachment %s: its namespace is gone without a CNI DEL; detaching",
                        name)
            threading.Thread(target=self._forget, args=(name,), daemon=True).start()

    def _forget(self, name: str) -> None:
        try:
            self._detach(name, wait=False)
        finally:
            with self._lock:
                self._forgetting.discard(name)


def check_attachment(ctr: DesiredContainer, path: str, prev: object) -> list[str]:
    """What differs between the namespace, the record and ``prevResult`` (empty: all agree)."""
    try:
        have = peek_interface(path, ctr.interface)
    except KernelError as e:
        return [str(e)]
    if have is None:
        return [f"interface {ctr.interface!r} is missing"]
    problems = []
    if have.addresses != ctr.address_cidrs:
        problems.append(f"addresses {list(have.addresses)}, expected {list(ctr.address_cidrs)}")
    if have.gateway != ctr.gateway:
        problems.append(f"default route via {have.gateway}, expected via {ctr.gateway}")
    if have.gateway6 != (ctr.gateway6 or None):
        problems.append(f"IPv6 default route via {have.gateway6}, expected via {ctr.gateway6}")
    if have.mac != ctr.mac:
        problems.append(f"MAC {have.mac}, expected {ctr.mac}")
    if not have.up:
        problems.append("interface is down")
    if isinstance(prev, dict):
        for ip in prev.get("ips") or []:
            if isinstance(ip, dict) and ip.get("address") not in have.addresses:
                problems.append(f"prevResult address {ip.get('address')} is not on the "
                                "interface")
        for route in prev.get("routes") or []:
            gateway = {"0.0.0.0/0": have.gateway, "::/0": have.gateway6}
            if isinstance(route, dict) and route.get("dst") in gateway and \
                    route.get("gw") and route.get("gw") != gateway[route["dst"]]:
                problems.append(f"prevResult default route via {route.get('gw')} is missing")
    return problems


def _port_text(p: PortMapping) -> str:
    return port_text(p.host_ip, p.host_port, p.container_port, p.protocol)


def check_ports(ctr: DesiredContainer, conf: dict[str, Any], rules: set[str]) -> list[str]:
    """Published ports: the record's against ``runtimeConfig.portMappings`` (when the runtime
    passed them: capability ``portMappings``), and each one's DNAT rule against ``rules`` (the
    comments of our output chain's rules)."""
    problems = []
    have = sorted(_port_text(p) for p in ctr.ports)
    if "portMappings" in (conf.get("runtimeConfig") or {}):
        wanted = sorted(port_mappings(conf))
        if wanted != have:
            problems.append(f"published ports {have}, expected {wanted}")
    for p in ctr.ports:
        if f"sdnctl:ctr/{ctr.name}/port/{p.protocol}/{p.host_port}" not in rules:
            problems.append(f"published port {_port_text(p)} has no DNAT rule")
    return problems


def _cni_args(args: str) -> dict[str, str]:
    """``CNI_ARGS``: ``K=V;K=V``."""
    return dict(part.split("=", 1) for part in args.split(";") if "=" in part)


def requested_ip(conf: dict[str, Any], args: str) -> str:
    """A static address: ``runtimeConfig.ips`` (capability ``ips``), ``args.cni.ips`` or
    ``CNI_ARGS`` ``IP=``; the first IPv4 one, without its prefix length."""
    runtime = conf.get("runtimeConfig") or {}
    cni_args = (conf.get("args") or {}).get("cni") or {}
    for ips in (runtime.get("ips"), cni_args.get("ips")):
        if isinstance(ips, list) and ips:
            return str(ips[0]).split("/")[0]
    return _cni_args(args).get("IP", "").split("/")[0]


def requested_aliases(conf: dict[str, Any], network: str, args: str) -> list[str]:
    """DNS names of the attachment on its network, beside its own: ``runtimeConfig.aliases``
    (capability ``aliases``: network name -> names, as Podman passes them; the CNI network's
    ``name`` or the sdnctl network's), ``args.cni.aliases``, and the container's name that
    Podman and Kubernetes pass in ``CNI_ARGS`` (``K8S_POD_NAME``) when it is a valid name.
    An invalid alias asked for explicitly is a configuration error (7)."""
    runtime = (conf.get("runtimeConfig") or {}).get("aliases") or {}
    cni_args = (conf.get("args") or {}).get("cni") or {}
    if not isinstance(runtime, dict):
        raise CniError(ERR_CONFIG, "runtimeConfig.aliases: expected an object (network name -> "
                       "list of names)")
    asked: list[tuple[str, object]] = []
    for key in dict.fromkeys((str(conf.get("name") or ""), network)):
        names = runtime.get(key) or []
        asked += [(f"runtimeConfig.aliases.{key}[{i}]", n)
                  for i, n in enumerate(names if isinstance(names, list) else [names])]
    extra = cni_args.get("aliases") or []
    asked += [(f"args.cni.aliases[{i}]", n)
              for i, n in enumerate(extra if isinstance(extra, list) else [extra])]
    aliases = []
    for where, name in asked:
        try:
            check_name(name if isinstance(name, str) else "", where)
        except Invalid as e:
            raise CniError(ERR_CONFIG, str(e)) from None
        aliases.append(str(name))
    pod = _cni_args(args).get("K8S_POD_NAME", "")
    try:
        check_name(pod, "K8S_POD_NAME")
        aliases.append(pod)
    except Invalid:
        pass  # a name DNS cannot carry: the attachment keeps its own only
    return list(dict.fromkeys(aliases))


def requested_mac(conf: dict[str, Any], args: str) -> str:
    runtime = conf.get("runtimeConfig") or {}
    cni_args = (conf.get("args") or {}).get("cni") or {}
    return str(runtime.get("mac") or cni_args.get("mac") or _cni_args(args).get("MAC", ""))


def port_mappings(conf: dict[str, Any]) -> list[str]:
    """``runtimeConfig.portMappings`` (capability ``portMappings``, as portmap reads it) as
    sdnctl's published ports: ``[HOST_IP:]HOST_PORT:CONTAINER_PORT/PROTO``."""
    mappings = (conf.get("runtimeConfig") or {}).get("portMappings") or []
    ports = []
    for i, m in enumerate(mappings if isinstance(mappings, list) else []):
        if not isinstance(m, dict) or "hostPort" not in m or "containerPort" not in m:
            raise CniError(ERR_CONFIG, f"runtimeConfig.portMappings[{i}]: expected hostPort "
                           "and containerPort")
        ports.append(port_text(str(m.get("hostIP") or ""), int(m["hostPort"]),
                               int(m["containerPort"]), str(m.get("protocol") or "tcp").lower()))
    return ports
