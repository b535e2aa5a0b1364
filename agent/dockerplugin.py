"""sdnctl as a Docker network plugin (issue 18): libnetwork's remote driver and IPAM driver,
served by the agent of the host whose dockerd uses it.

Design note. Docker 20.10 finds a legacy plugin through a spec file (``unix://<socket>``) in
its plugin directory and speaks JSON over HTTP on that unix socket, one POST per call
(``/Plugin.Activate``, ``/NetworkDriver.Join``, ``/IpamDriver.RequestAddress``...). The server
is off by default; ``--docker-socket PATH`` turns it on (and ``--docker-spec PATH`` writes the
spec file where that host's dockerd looks). Each call is one thread; the kernel work (one veth
pair at Join) opens its own netlink socket in the agent's namespace.

Who does what, in the order dockerd calls:

- ``RequestPool`` (``--subnet``, required): the pool is the sdnctl network's CIDR. With
  ``--ipv6`` dockerd asks again (``V6``) for the IPv6 ``--subnet``, which must be the
  ``subnet6`` of the sdnctl network whose CIDR is the IPv4 pool it asked for just before (a
  dual-stack Docker network adopts an existing dual-stack sdnctl network). Docker 20.10 asks an
  IPv4 pool of every network: an IPv6-only sdnctl network cannot be a Docker network. Each pool
  gets its own PoolID (``sdnctl/<cidr>#<tag>``), and an IPv6 pool is paired with its network's
  IPv4 pool (kept in the state file), so an address request says which Docker network it is.
- ``CreateNetwork``: the sdnctl network named ``-o sdnctl.network=NAME`` (default: the one
  whose CIDR is the pool, else the Docker network's own name) is adopted when it exists with
  that CIDR, else created through the controller (``-o sdnctl.driver=bridge|overlay``, default
  overlay). Docker does not tell a driver the network's name: with ``--docker-host`` the agent
  asks dockerd for it in a thread, once CreateNetwork has returned and dockerd has stored the
  network, and the calls that need the network wait for that (without: ``docker-<cidr>``).
  Docker's network ID -> sdnctl name is kept in a small JSON file beside the socket.
  ``DeleteNetwork`` forgets the ID only: the controller's network may serve other hosts.
- ``RequestAddress``: an address from this host's lease, through ``HostSync.Attach`` (a
  *reservation*: an attachment marked ``docker`` whose veth does not exist yet; ``--ip`` is its
  fixed address). The answer carries the lease's prefix length (/24 of a /16), so a container
  reaches other hosts' containers through its gateway, as sdnctl's own do.
  ``ReleaseAddress`` detaches the reservation: the controller frees the address.
- IPv6 (dual-stack): dockerd asks for an endpoint's IPv4 address, then at once its IPv6 one,
  under its network's lock, with no endpoint ID in either. The IPv4 request makes the
  reservation, and the controller gives it both addresses in one transaction; the IPv6 request
  answers the IPv6 address of the newest reservation of the paired IPv4 pool that awaits it
  (one attachment, never two). ``--ip6`` moves that reservation's IPv6 address (``Attach``
  again: the controller keeps the IPv4 one, in one transaction). The attachment goes when
  Docker has released the addresses of both families it was given (releases come per family,
  interleaved across endpoints: detached at the first, its IPv6 address could be handed out
  again and the second release would take someone else's endpoint). CreateEndpoint checks
  that ``AddressIPv6`` is the same reservation's; Join answers ``GatewayIPv6``.
- ``CreateEndpoint``: the reservation of that address becomes the endpoint; its MAC is
  sdnctl's (``02:42:`` + the IPv4 address), known to the anti-spoofing guards.
- ``Join``: a veth pair in the host namespace, the host side in the network's bridge, the peer
  handed to dockerd (``SrcName``, ``DstPrefix eth``), which moves it into the sandbox and
  addresses it; the gateway is this host's. Docker's own firewall (``FORWARD`` policy DROP
  through iptables-nft) would drop our forwarding: ``DOCKER-USER`` gets an accept for the
  bridge, in and out. ``Leave`` removes the pair.
- Published ports (``-p``) come with ``CreateEndpoint``: they go onto the reservation
  (``Attach`` again, same owner), so the agent's firewall publishes them with the same DNAT as
  ``sdnctl run -p`` (the client's address is kept); Join waits until they are realised.
- Garbage: an endpoint whose veth vanished without a Leave (its sandbox's namespace went, with
  a dockerd that died or forgot it) is detached once a pass sees it gone
  (:meth:`Plugin.forget_gone`). Networks, endpoints and joins are kept in a JSON file beside
  the socket, so a restarted agent still knows them.

Failures answer ``{"Err": "..."}``; unknown methods 404. A handler checks its whole request
before it changes anything (tests/unit/test_fuzz_docker_plugin.py sends hostile JSON).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import ipaddress
import json
import logging
import os
import secrets
import shutil
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from agent.cni import Realised
from agent.desired import DesiredState
from agent.kernel.errors import KernelError
from agent.names import bridge_name, container_mac, veth_alias, veth_name
from sdnctl.api import wire
from sdnctl.api.fields import check_name
from sdnctl.api.model import Invalid
from sdnctl.v1 import sdnctl_pb2 as pb

if TYPE_CHECKING:  # (the generated stubs import grpcio: the agent calls through wire)
    from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

log = logging.getLogger("sdnctl.agent.docker")

REQUEST_MAX = 1 << 20
RPC_TIMEOUT = 10.0
JOIN_TIMEOUT = 20.0
NAMING_TIMEOUT = 10.0
CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
ADDRESS_SPACE = "sdnctl"
GATEWAY_REQUEST = "com.docker.network.gateway"  # RequestAddressType of the network's gateway
OPT_NETWORK = "sdnctl.network"
OPT_DRIVER = "sdnctl.driver"
GENERIC = "com.docker.network.generic"
PORTMAP = "com.docker.network.portmap"
#: The placeholder namespace of a reservation (the sandbox is dockerd's and comes later).
RESERVED_NETNS = "/run/docker/sdnctl-endpoint"
INTERFACE = "eth0"  # the controller's interface name of every Docker endpoint
DRIVERS = ("bridge", "overlay")


class PluginError(Exception):
    """A call that fails: answered ``{"Err": message}``."""


class Kernel(Protocol):
    """The kernel work of a Join and a Leave (``links.Links`` in the agent; a fake in tests)."""

    def ensure_handover_veth(self, host_ifname: str, alias: str, bridge: str, mtu: int,
                             peer_ifname: str, mac: str) -> int: ...

    def remove_link(self, name: str) -> bool: ...


@dataclass
class DockerSide:
    """What the plugin needs of the agent (agent/main.py's Agent provides it)."""

    host: str
    sync: Callable[[], pb_grpc.HostSyncStub]
    control: Callable[[], pb_grpc.ControllerStub]
    desired: Callable[[], DesiredState]  # a consistent copy
    realised: Realised
    kernel: Callable[[], contextlib.AbstractContextManager[Kernel]]
    accept_bridge: Callable[[str], None]  # Docker's DOCKER-USER chain: accept our bridge
    docker_host: str = ""  # the dockerd served (unix:///...): asked for networks' names
    #: removes a Leave's veth, telling the agent's drift filter first (the endpoint is still
    #: desired until DeleteEndpoint); None: through ``kernel``
    remove_veth: Callable[[str], object] | None = None


@dataclass
class Reservation:
    """What one endpoint's RequestAddress calls made: an attachment of this host's with its IPv4
    address and, on a dual-stack network, its IPv6 one (the controller allocates both)."""

    network: str
    ip: str
    ip6: str = ""
    prefixlen6: int = 0
    fixed: str = ""  # its --ip
    fixed6: str = ""  # its --ip6
    revision: int = 0  # of its last write


def peer_name(endpoint: str) -> str:
    """The container side's name until dockerd renames it: outside our prefixes, untagged."""
    return "dkp" + hashlib.sha1(endpoint.encode()).hexdigest()[:8]


def _text(request: dict[str, Any], key: str, required: bool = True) -> str:
    value = request.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise PluginError(f"{key}: expected a string, got {type(value).__name__}")
    if required and not value:
        raise PluginError(f"{key}: missing")
    if len(value) > 4096 or "\0" in value:
        raise PluginError(f"{key}: not a plausible value")
    return value


def _object(request: dict[str, Any], key: str) -> dict[str, Any]:
    value = request.get(key) or {}
    if not isinstance(value, dict):
        raise PluginError(f"{key}: expected an object, got {type(value).__name__}")
    return value


Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _family(v6: bool) -> str:
    return "IPv6" if v6 else "IPv4"


def _cidr(value: str, what: str, v6: bool = False) -> Net:
    try:
        net = ipaddress.IPv6Network(value) if v6 else ipaddress.IPv4Network(value)
    except ValueError as e:
        raise PluginError(f"{what}: {value!r} is not an {_family(v6)} CIDR ({e})") from None
    return net


def _address(value: str, what: str, v6: bool = False) -> str:
    """An address (``ADDR`` or ``ADDR/LEN``) of the family, as sdnctl writes it."""
    try:
        iface = ipaddress.IPv6Interface(value) if v6 else ipaddress.IPv4Interface(value)
    except ValueError as e:
        raise PluginError(f"{what}: {value!r} is not an {_family(v6)} address ({e})") from None
    return str(iface.ip)


def _rpc(e: wire.RpcError, what: str) -> PluginError:
    details = e.details()
    code = e.code()
    if code in (wire.StatusCode.UNAVAILABLE, wire.StatusCode.DEADLINE_EXCEEDED):
        return PluginError(f"{what}: the sdnctl controller is unreachable from this host's "
                           "agent; try again when it is back")
    return PluginError(f"{what}: {details}")


class Plugin:
    """The protocol's handlers: ``call(method, body) -> (HTTP status, answer)``."""

    def __init__(self, side: DockerSide, state_file: str = "") -> None:
        self.side = side
        self.state_file = state_file
        self._lock = threading.Lock()
        self.networks: dict[str, str] = self._load()  # Docker network ID -> sdnctl network
        self.reserved: dict[str, Reservation] = {}  # reservation name -> what it holds
        # IPv4 PoolID of a dual-stack Docker network -> its reservations whose IPv6 address
        # dockerd has not asked for yet (newest last), and the IPv4 pool RequestPool answered
        # last (the next IPv6 pool is the same Docker network's)
        self.awaiting: dict[str, list[str]] = {}
        self.last_pool4 = ""
        self.accepted: set[str] = set()  # bridges with their DOCKER-USER accept in place
        # Docker network ID -> (subnet, done) while its name is asked of dockerd, and the
        # failures of those that could not be made
        self.naming: dict[str, tuple[str, threading.Event]] = {}
        self.naming_errors: dict[str, str] = {}
        self.gateways: set[str] = set()  # "pool/address": gateways answered (never reserved)
        self.methods: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "Plugin.Activate": lambda r: {"Implements": ["NetworkDriver", "IpamDriver"]},
            "NetworkDriver.GetCapabilities":
                lambda r: {"Scope": "local", "ConnectivityScope": "global"},
            "NetworkDriver.CreateNetwork": self.create_network,
            "NetworkDriver.DeleteNetwork": self.delete_network,
            "NetworkDriver.CreateEndpoint": self.create_endpoint,
            "NetworkDriver.EndpointOperInfo": lambda r: {"Value": {}},
            "NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "NetworkDriver.Join": self.join,
            "NetworkDriver.Leave": self.leave,
            "NetworkDriver.DiscoverNew": lambda r: {},
            "NetworkDriver.DiscoverDelete": lambda r: {},
            "NetworkDriver.ProgramExternalConnectivity": self.program_external,
            "NetworkDriver.RevokeExternalConnectivity": lambda r: {},
            "NetworkDriver.AllocateNetwork": lambda r: {},
            "NetworkDriver.FreeNetwork": lambda r: {},
            "IpamDriver.GetCapabilities":
                lambda r: {"RequiresMACAddress": False, "RequiresRequestReplay": False},
            "IpamDriver.GetDefaultAddressSpaces":
                lambda r: {"LocalDefaultAddressSpace": ADDRESS_SPACE,
                           "GlobalDefaultAddressSpace": ADDRESS_SPACE},
            "IpamDriver.RequestPool": self.request_pool,
            "IpamDriver.ReleasePool": self.release_pool,
            "IpamDriver.RequestAddress": self.request_address,
            "IpamDriver.ReleaseAddress": self.release_address,
        }

    # -- dispatch -----------------------------------------------------------------------------

    def call(self, method: str, body: bytes) -> tuple[int, dict[str, Any]]:
        handler = self.methods.get(method)
        if handler is None:
            return 404, {"Err": f"{method!r} is not served by the sdnctl plugin"}
        if len(body) > REQUEST_MAX:
            return 413, {"Err": f"{method}: request larger than {REQUEST_MAX} bytes"}
        try:
            request = json.loads(body) if body.strip() else {}
            if not isinstance(request, dict):
                raise PluginError(f"expected a JSON object, got {type(request).__name__}")
        except (ValueError, RecursionError) as e:
            return 400, {"Err": f"{method}: bad request: {e}"}
        except PluginError as e:
            return 400, {"Err": f"{method}: {e}"}
        log.debug("docker call %s %s", method, body[:600].decode(errors="replace"))
        try:
            return 200, handler(request)
        except PluginError as e:
            log.info("docker %s: %s", method, e)
            return 500, {"Err": f"sdnctl: {e}"}
        except (KernelError, OSError) as e:
            log.warning("docker %s failed: %s", method, e, exc_info=True)
            return 500, {"Err": f"sdnctl: {method}: {e}"}

    # -- IPAM ---------------------------------------------------------------------------------

    def request_pool(self, request: dict[str, Any]) -> dict[str, Any]:
        v6 = request.get("V6") or False
        if not isinstance(v6, bool):
            raise PluginError(f"V6: expected a boolean, got {type(v6).__name__}")
        pool = _text(request, "Pool", required=False)
        if not pool and v6:
            raise PluginError("sdnctl's IPAM needs an IPv6 --subnet with --ipv6: the sdnctl "
                              "network's subnet6")
        if not pool:
            raise PluginError("sdnctl's IPAM needs --subnet: the sdnctl network's CIDR "
                              "(the same on every host; Docker 20.10 asks an IPv4 pool of "
                              "every network, so an IPv6-only network cannot be served)")
        subnet = _cidr(pool, "Pool", v6)
        if _text(request, "SubPool", required=False):
            raise PluginError("--ip-range is not served by sdnctl's IPAM: each host's lease "
                              "is carved by the controller")
        _object(request, "Options")
        # Each pool its own ID: an endpoint's IPv4 pool says whether its IPv6 address follows.
        pool_id = f"{ADDRESS_SPACE}/{subnet}#{secrets.token_hex(4)}"
        if not v6:
            with self._lock:
                self.last_pool4 = pool_id
            return {"PoolID": pool_id, "Pool": str(subnet), "Data": {}}
        with self._lock:
            pool4 = self.last_pool4
        self._check_pool6(subnet, pool4)
        with self._lock:
            self.pools6[pool_id] = pool4
            self.last_pool4 = ""
            self._save()
        return {"PoolID": pool_id, "Pool": str(subnet), "Data": {}}

    def _check_pool6(self, subnet6: Net, pool4: str) -> None:
        """An IPv6 pool is an sdnctl network's subnet6, whose subnet is the IPv4 pool dockerd
        asked for just before (for the same Docker network)."""
        if not pool4:
            raise PluginError(f"Pool: IPv6 pool {subnet6} comes with no IPv4 pool of "
                              "sdnctl's: give the network's IPv4 --subnet too")
        subnet4 = self._parse_pool(pool4)[1]
        have = [n for n in self._networks().values() if n.subnet6 == str(subnet6)]
        if not have:
            raise PluginError(f"Pool: no sdnctl network has subnet6 {subnet6} (sdnctl's IPAM "
                              "serves the IPv6 pool of an existing dual-stack network: "
                              "sdnctl network create --subnet6)")
        if have[0].subnet != str(subnet4):
            raise PluginError(f"Pool: {subnet6} is sdnctl network {have[0].name!r}'s subnet6, "
                              f"whose subnet is {have[0].subnet or 'none (IPv6-only)'}, not "
                              f"{subnet4}")

    def release_pool(self, request: dict[str, Any]) -> dict[str, Any]:
        pool_id = self._pool(request)[0]
        with self._lock:
            self.awaiting.pop(pool_id, None)
            if self.last_pool4 == pool_id:  # its network's IPv6 pool was refused
                self.last_pool4 = ""
            if self.pools6.pop(pool_id, None) is not None:
                self._save()
        return {}

    @staticmethod
    def _parse_pool(pool_id: str) -> tuple[str, Net]:
        space, _, rest = pool_id.partition("/")
        if space != ADDRESS_SPACE:
            raise PluginError(f"PoolID: {pool_id!r} is not one of sdnctl's pools")
        cidr = rest.partition("#")[0]  # ("#tag": a pool's own ID; older IDs have none)
        return pool_id, _cidr(cidr, "PoolID", v6=":" in cidr)

    def _pool(self, request: dict[str, Any]) -> tuple[str, Net]:
        return self._parse_pool(_text(request, "PoolID"))

    def request_address(self, request: dict[str, Any]) -> dict[str, Any]:
        pool_id, subnet = self._pool(request)
        v6 = subnet.version == 6
        options = _object(request, "Options")
        wanted = _text(request, "Address", required=False)
        ip = _address(wanted, "Address", v6) if wanted else ""
        if ip and ipaddress.ip_address(ip) not in subnet:
            raise PluginError(f"Address: {ip} is not in {subnet}")
        if options.get("RequestAddressType") == GATEWAY_REQUEST:
            # Docker asks for a network-wide gateway; sdnctl's is per host (each lease's first
            # address) and Join gives each container its own. This one is only recorded.
            gateway = ip or str(next(subnet.hosts()))
            with self._lock:
                self.gateways.add(f"{subnet}/{gateway}")
            return {"Address": f"{gateway}/{subnet.prefixlen}", "Data": {}}
        if v6:
            return self._request_address6(pool_id, ip)
        network = self._network_of(subnet)
        name = "dk-" + secrets.token_hex(8)
        view = self._attach(name, network, ip, "", [], f"an address on network {network!r}")
        with self._lock:
            self.reserved[name] = Reservation(network, view.ip, view.ip6, view.prefixlen6,
                                              fixed=ip, revision=view.revision)
            self.held[name] = {4}
            if pool_id in self.pools6.values():  # dual-stack: its IPv6 request comes next
                self.awaiting.setdefault(pool_id, []).append(name)
            self._save()
        log.info("docker: reserved %s/%d on %s as %s", view.ip, view.prefixlen, network, name)
        return {"Address": f"{view.ip}/{view.prefixlen}", "Data": {}}

    def _request_address6(self, pool_id: str, ip6: str) -> dict[str, Any]:
        """An endpoint's IPv6 address: the one its reservation got with its IPv4 address.
        dockerd asks for the two one after the other, under its network's lock, so the newest
        reservation of the network's IPv4 pool that awaits its IPv6 address is this endpoint's.
        ``--ip6``: the reservation's IPv6 address moves there (its IPv4 one stays)."""
        with self._lock:
            pool4 = self.pools6.get(pool_id)
            queue = self.awaiting.get(pool4 or "", [])
            name = queue.pop() if queue else ""
            res = self.reserved.get(name)
        if pool4 is None:
            raise PluginError(f"PoolID: {pool_id!r} is not an IPv6 pool this agent paired with "
                              "an IPv4 one (recreate the Docker network)")
        if res is None:
            raise PluginError("Address: no IPv4 address of this network awaits its IPv6 one "
                              "(dockerd asks for an endpoint's IPv4 address first)")
        if ip6 and ip6 != res.ip6:
            view = self._attach(name, res.network, res.fixed, ip6, [], f"--ip6 {ip6}")
            with self._lock:
                res.ip6, res.prefixlen6, res.fixed6 = view.ip6, view.prefixlen6, ip6
                res.revision = view.revision
        if not res.ip6:
            raise PluginError(f"sdnctl network {res.network!r} has no subnet6: {name} has no "
                              "IPv6 address")
        with self._lock:
            self.held.setdefault(name, set()).add(6)
            self._save()
        log.info("docker: %s also has %s/%d", name, res.ip6, res.prefixlen6)
        return {"Address": f"{res.ip6}/{res.prefixlen6}", "Data": {}}

    def release_address(self, request: dict[str, Any]) -> dict[str, Any]:
        subnet = self._pool(request)[1]
        v6 = subnet.version == 6
        ip = _address(_text(request, "Address"), "Address", v6)
        with self._lock:
            if f"{subnet}/{ip}" in self.gateways:  # a network's gateway: nothing was reserved
                self.gateways.discard(f"{subnet}/{ip}")
                return {}
        found = self._reservation_by_address(ip, subnet)
        if found is None:
            return {}  # the network's placeholder gateway, or released already
        with self._lock:
            held = self.held.get(found)
            if held is not None:
                held.discard(6 if v6 else 4)
                if held:  # its other family's address is still Docker's: both go together
                    self._save()
                    return {}
        self._detach(found)
        return {}

    # -- networks -----------------------------------------------------------------------------

    def create_network(self, request: dict[str, Any]) -> dict[str, Any]:
        nid = _text(request, "NetworkID")
        options = _object(request, "Options")
        generic = options.get(GENERIC) or {}
        if not isinstance(generic, dict):
            raise PluginError(f"Options.{GENERIC}: expected an object")
        data = request.get("IPv4Data") or []
        if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
            raise PluginError("IPv4Data: expected one pool (--subnet) from sdnctl's IPAM "
                              "(--ipam-driver sdnctl)")
        data6 = request.get("IPv6Data") or []
        if not isinstance(data6, list) or len(data6) > 1 or \
                not all(isinstance(d, dict) for d in data6):
            raise PluginError("IPv6Data: expected at most one IPv6 pool (--ipv6 --subnet) from "
                              "sdnctl's IPAM")
        subnet = _cidr(_text(data[0], "Pool"), "IPv4Data.Pool")
        subnet6 = _cidr(_text(data6[0], "Pool"), "IPv6Data.Pool", v6=True) if data6 else None
        driver = generic.get(OPT_DRIVER, "overlay")
        if driver not in DRIVERS:
            raise PluginError(f"-o {OPT_DRIVER}: {driver!r}: expected one of {DRIVERS}")
        unknown = sorted(k for k in generic if str(k).startswith("sdnctl.")
                         and k not in (OPT_NETWORK, OPT_DRIVER))
        if unknown:
            raise PluginError(f"-o {unknown[0]}: unknown option (known: {OPT_NETWORK}, "
                              f"{OPT_DRIVER})")
        existing = self._networks()
        name = generic.get(OPT_NETWORK) or next(
            (n.name for n in existing.values() if n.subnet == str(subnet)
             and (subnet6 is None or n.subnet6 == str(subnet6))), "")
        if not isinstance(name, str):
            raise PluginError(f"-o {OPT_NETWORK}: expected a name")
        if not name and self.side.docker_host:
            # Docker does not tell a driver the network's name; dockerd answers it once this
            # call has returned and the network is stored: the sdnctl network is made then.
            done = threading.Event()
            with self._lock:
                self.naming[nid] = (str(subnet), done)
            threading.Thread(target=self._name_later, args=(nid, subnet, driver, done),
                             name="docker-name", daemon=True).start()
            return {}
        if subnet6 is not None and not name:
            raise PluginError(f"IPv6Data.Pool: no sdnctl network has subnet {subnet} and "
                              f"subnet6 {subnet6}")
        name = name or "docker-" + str(subnet).replace(".", "-").replace("/", "-")
        self._adopt_or_create(nid, name, subnet, driver, existing, subnet6)
        return {}

    def _adopt_or_create(self, nid: str, name: str, subnet: Net, driver: str,
                         existing: dict[str, pb.Network], subnet6: Net | None = None) -> None:
        """Adopt sdnctl network ``name`` or create it (IPv4 only: a dual-stack Docker network
        adopts an existing dual-stack sdnctl network)."""
        try:
            check_name(name, f"-o {OPT_NETWORK}")
        except Invalid as e:
            raise PluginError(str(e)) from None
        have = existing.get(name)
        if have is not None:
            if have.subnet != str(subnet):
                raise PluginError(f"sdnctl network {name!r} exists with subnet {have.subnet}, "
                                  f"not {subnet}: use --subnet {have.subnet}")
            if subnet6 is not None and have.subnet6 != str(subnet6):
                raise PluginError(f"sdnctl network {name!r} has subnet6 "
                                  f"{have.subnet6 or 'none'}, not {subnet6}")
            if have.driver not in DRIVERS:
                raise PluginError(f"sdnctl network {name!r} has driver {have.driver!r}")
        elif subnet6 is not None:
            raise PluginError(f"-o {OPT_NETWORK}: sdnctl network {name!r} does not exist (an "
                              "IPv6 pool is an existing network's subnet6)")
        else:
            try:
                self.side.control().CreateNetwork(pb.CreateNetworkRequest(
                    network=pb.Network(name=name, driver=driver, subnet=str(subnet))),
                    timeout=RPC_TIMEOUT)
            except wire.RpcError as e:
                if e.code() != wire.StatusCode.ALREADY_EXISTS:  # another host was first
                    raise _rpc(e, f"network {name!r}") from None
            log.info("docker: created sdnctl network %s (%s, %s)", name, driver, subnet)
        with self._lock:
            self.networks[nid] = name
            self._save()

    def _name_later(self, nid: str, subnet: Net, driver: str,
                    done: threading.Event) -> None:
        """Ask dockerd for network ``nid``'s name, then adopt or create it; a failure is kept
        for the first call that needs the network (``docker run`` shows it)."""
        try:
            name = docker_network_name(self.side.docker_host, nid)
            self._adopt_or_create(nid, name, subnet, driver, self._networks())
        except (PluginError, OSError, ValueError) as e:
            log.warning("docker: network %s: %s", nid[:12], e)
            with self._lock:
                self.naming_errors[nid] = str(e)
        finally:
            done.set()

    def _named(self, nid: str = "", subnet: str = "") -> None:
        """Wait for the naming of network ``nid`` (or of any with ``subnet``) to finish."""
        with self._lock:
            waits = [(n, e) for n, (cidr, e) in self.naming.items()
                     if n == nid or (subnet and cidr == subnet)]
        for n, event in waits:
            if not event.wait(NAMING_TIMEOUT):
                raise PluginError(f"dockerd did not say network {n[:12]}'s name within "
                                  f"{NAMING_TIMEOUT:.0f} s")
            with self._lock:
                self.naming.pop(n, None)
                error = self.naming_errors.pop(n, "")
            if error:
                raise PluginError(error)

    def delete_network(self, request: dict[str, Any]) -> dict[str, Any]:
        nid = _text(request, "NetworkID")
        with self._lock:
            if self.networks.pop(nid, None) is not None:
                self._save()
        return {}

    def _networks(self) -> dict[str, pb.Network]:
        try:
            listed = self.side.control().ListNetworks(pb.ListRequest(), timeout=RPC_TIMEOUT)
        except wire.RpcError as e:
            raise _rpc(e, "the sdnctl networks") from None
        return {n.name: n for n in listed.networks}

    def _attach(self, name: str, network: str, fixed_ip: str, fixed_ip6: str, ports: list[str],
                what: str) -> pb.Container:
        """Record (or update: ports, --ip6) the Docker endpoint ``name`` as an attachment of
        this host's; a refusal becomes a ``PluginError`` about ``what``."""
        spec = pb.Container(name=name, host=self.side.host, network=network,
                            interface=INTERFACE, fixed_ip=fixed_ip, fixed_ip6=fixed_ip6,
                            ports=ports,
                            cni=pb.CniOwner(container_id=name, netns=RESERVED_NETNS,
                                            docker=True))
        try:
            return self.side.sync().Attach(pb.AttachRequest(host=self.side.host,
                                                            container=spec),
                                           timeout=RPC_TIMEOUT)
        except wire.RpcError as e:
            raise _rpc(e, what) from None

    def _network_of(self, subnet: Net) -> str:
        """The sdnctl network an IPv4 pool is: the one a CreateNetwork of ours named, else the
        controller's network of that CIDR (the first RequestAddress is the gateway's, before
        CreateNetwork)."""
        self._named(subnet=str(subnet))
        with self._lock:
            known = set(self.networks.values())
        for name, have in self.side.desired().networks.items():
            if name in known and have.cidr == str(subnet):
                return name
        for net in self._networks().values():
            if net.subnet == str(subnet):
                return net.name
        raise PluginError(f"no sdnctl network has subnet {subnet}")

    def _network_id(self, request: dict[str, Any]) -> str:
        nid = _text(request, "NetworkID")
        self._named(nid=nid)
        with self._lock:
            name = self.networks.get(nid)
        if name is None:
            raise PluginError(f"NetworkID: {nid[:12]} is not a network of this plugin "
                              "(created before the agent kept its state?)")
        return name

    # -- endpoints ----------------------------------------------------------------------------

    def _reservation_by_address(self, ip: str, subnet: Net | None = None,
                                network: str = "") -> str | None:
        """The reservation holding address ``ip`` (of either family)."""
        with self._lock:
            for name, res in self.reserved.items():
                if ip in (res.ip, res.ip6) and (not network or res.network == network):
                    return name
        for name, ctr in self.side.desired().containers.items():
            if ctr.cni_docker and ip in (ctr.ip, ctr.ip6) \
                    and (not network or ctr.target == network) \
                    and (subnet is None or ipaddress.ip_address(ip) in subnet):
                return name
        return None

    def create_endpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        network = self._network_id(request)
        endpoint = _text(request, "EndpointID")
        interface = _object(request, "Interface")
        ip = _address(_text(interface, "Address"), "Interface.Address")
        ip6 = _text(interface, "AddressIPv6", required=False)
        ip6 = _address(ip6, "Interface.AddressIPv6", v6=True) if ip6 else ""
        mac = _text(interface, "MacAddress", required=False)
        ports = port_bindings(_object(request, "Options").get(PORTMAP))
        name = self._reservation_by_address(ip, network=network)
        if name is None:
            raise PluginError(f"{ip} was not given by sdnctl's IPAM on network {network!r}: "
                              "create the Docker network with --ipam-driver sdnctl")
        if ip6 and self._reservation_by_address(ip6, network=network) != name:
            raise PluginError(f"Interface.AddressIPv6: {ip6} was not given by sdnctl's IPAM "
                              f"with {ip} on network {network!r}")
        if mac and mac.lower() != container_mac(ip):
            raise PluginError(f"--mac-address {mac}: sdnctl derives each container's MAC "
                              f"from its address ({container_mac(ip)}; its guards know it)")
        if ports:
            self._publish(name, network, ip, ports)
        with self._lock:
            self.endpoints[endpoint] = ip
            if ip6:
                self.endpoints6[endpoint] = ip6
            self._save()
        log.info("docker: endpoint %s on %s is %s%s", endpoint[:12], network, ip,
                 f" and {ip6}" if ip6 else "")
        return {} if mac else {"Interface": {"MacAddress": container_mac(ip)}}

    def _publish(self, name: str, network: str, ip: str, ports: list[str]) -> None:
        """The reservation's published ports, through the controller (its DNAT is the
        agent's firewall's, as for ``sdnctl run -p``); Join waits until they are realised."""
        with self._lock:
            res = self.reserved.get(name)
        fixed, fixed6 = (res.fixed, res.fixed6) if res else ("", "")
        view = self._attach(name, network, fixed, fixed6, ports,
                            f"published ports {', '.join(ports)} of {ip}")
        if res is not None:
            with self._lock:
                res.revision = view.revision
        log.info("docker: %s publishes %s", ip, ", ".join(ports))

    def _endpoint(self, request: dict[str, Any]) -> str:
        """The reservation of an endpoint, found by its address."""
        network = self._network_id(request)
        endpoint = _text(request, "EndpointID")
        found = self._endpoint_address(endpoint)
        if found is None:
            raise PluginError(f"EndpointID: {endpoint[:12]} is not an endpoint of this plugin")
        name = self._reservation_by_address(found, network=network)
        if name is None:
            raise PluginError(f"endpoint {endpoint[:12]}: its address {found} is no longer "
                              "reserved")
        return name

    def _endpoint_address(self, endpoint: str) -> str | None:
        with self._lock:
            return self.endpoints.get(endpoint)

    def join(self, request: dict[str, Any]) -> dict[str, Any]:
        self._network_id(request)
        endpoint = _text(request, "EndpointID")
        _text(request, "SandboxKey")
        _object(request, "Options")
        name = self._endpoint(request)
        ctr = self._wait_desired(name)
        net = self.side.desired().networks.get(ctr.target)
        if net is None:
            raise PluginError(f"network {ctr.target!r} is not on this host yet")
        bridge = bridge_name(ctr.target)
        with self.side.kernel() as kernel:
            kernel.ensure_handover_veth(veth_name(name, INTERFACE), veth_alias(name, INTERFACE),
                                        bridge, net.mtu, peer_name(endpoint),
                                        container_mac(ctr.ip))
        if bridge not in self.accepted:
            self.side.accept_bridge(bridge)
            self.accepted.add(bridge)
        with self._lock:
            self.joined[name] = time.monotonic()
            self._save()
            dual = endpoint in self.endpoints6
        answer = {"InterfaceName": {"SrcName": peer_name(endpoint), "DstPrefix": "eth"},
                  "Gateway": ctr.gateway, "StaticRoutes": [], "DisableGatewayService": False}
        if dual and ctr.gateway6:  # its IPv6 default route (Docker gave it the address)
            answer["GatewayIPv6"] = ctr.gateway6
        return answer

    def _wait_desired(self, name: str) -> Any:
        """The reservation as this host's desired state has it, once a pass has seen it (its
        network's bridge is built by then)."""
        with self._lock:
            res = self.reserved.get(name)
            written = res.revision if res else 0
        if not self.side.realised.wait(
                lambda revision, statuses: revision >= written and name in statuses,
                JOIN_TIMEOUT):
            raise PluginError(f"the agent did not see reservation {name} within "
                              f"{JOIN_TIMEOUT:.0f} s")
        ctr = self.side.desired().containers.get(name)
        if ctr is None:
            raise PluginError(f"reservation {name} is gone")
        return ctr

    def leave(self, request: dict[str, Any]) -> dict[str, Any]:
        self._network_id(request)
        endpoint = _text(request, "EndpointID")
        name = self._endpoint(request)
        with self._lock:
            if self.joined.pop(name, None) is not None:
                self._save()
        if self.side.remove_veth is not None:
            self.side.remove_veth(veth_name(name, INTERFACE))
        else:
            with self.side.kernel() as kernel:
                kernel.remove_link(veth_name(name, INTERFACE))
        log.info("docker: endpoint %s left", endpoint[:12])
        return {}

    def delete_endpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        self._network_id(request)
        endpoint = _text(request, "EndpointID")
        with self._lock:
            self.endpoints6.pop(endpoint, None)
            if self.endpoints.pop(endpoint, None) is not None:
                self._save()
        return {}

    def program_external(self, request: dict[str, Any]) -> dict[str, Any]:
        self._network_id(request)
        _text(request, "EndpointID")
        options = _object(request, "Options")
        port_bindings(options.get(PORTMAP))  # published at CreateEndpoint, realised by Join
        return {}

    def _detach(self, name: str) -> None:
        try:
            self.side.sync().Detach(pb.DetachRequest(host=self.side.host, name=name),
                                    timeout=RPC_TIMEOUT)
        except wire.RpcError as e:
            if e.code() != wire.StatusCode.NOT_FOUND:
                raise _rpc(e, f"endpoint {name}") from None
        with self._lock:
            self.reserved.pop(name, None)
            for queue in self.awaiting.values():
                if name in queue:
                    queue.remove(name)
            if self.held.pop(name, None) is not None:
                self._save()
        log.info("docker: released %s", name)

    def forget_gone(self, names: list[str], observed_at: float) -> None:
        """Endpoints whose veth went without a Leave (the sandbox's namespace went: dockerd
        died or forgot them), as a pass that started at ``observed_at`` saw: detach them, in a
        thread (the reconciler must not wait on the controller). A veth built after that pass
        looked is not gone."""
        with self._lock:
            gone = [n for n in names if n in self.joined and self.joined[n] < observed_at]
            for name in gone:
                del self.joined[name]
            if gone:
                self._save()
        for name in gone:
            log.warning("docker: endpoint %s lost its veth without a Leave; detaching", name)
            threading.Thread(target=self._forget, args=(name,), daemon=True).start()

    def _forget(self, name: str) -> None:
        try:
            self._detach(name)
        except PluginError as e:
            log.warning("docker: could not detach %s: %s", name, e)

    # -- state --------------------------------------------------------------------------------

    def _load(self) -> dict[str, str]:
        """Docker's network IDs and endpoints survive an agent restart (dockerd keeps them),
        and so do the pairs of pools of dual-stack networks and the families of each
        reservation's addresses that Docker holds."""
        self.endpoints: dict[str, str] = {}  # Docker endpoint ID -> address
        self.endpoints6: dict[str, str] = {}  # Docker endpoint ID -> IPv6 address (dual-stack)
        self.joined: dict[str, float] = {}  # reservation -> when its veth was built (monotonic)
        self.pools6: dict[str, str] = {}  # IPv6 PoolID -> its network's IPv4 PoolID
        self.held: dict[str, set[int]] = {}  # reservation -> families Docker holds (4, 6)
        if not self.state_file:
            return {}
        try:
            with open(self.state_file) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        endpoints = data.get("endpoints")
        if isinstance(endpoints, dict):
            self.endpoints = {str(k): str(v) for k, v in endpoints.items()}
        for key, into in (("endpoints6", self.endpoints6), ("pools6", self.pools6)):
            found = data.get(key)
            if isinstance(found, dict):
                into.update({str(k): str(v) for k, v in found.items()})
        held = data.get("held")
        if isinstance(held, dict):
            self.held = {str(k): {f for f in (4, 6) if isinstance(v, list) and f in v}
                         for k, v in held.items()}
        joined = data.get("joined")
        if isinstance(joined, list):  # joined before this agent started: long ago
            self.joined = {str(name): 0.0 for name in joined}
        nets = data.get("networks")
        return {str(k): str(v) for k, v in nets.items()} if isinstance(nets, dict) else {}

    def _save(self) -> None:
        if not self.state_file:
            return
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"networks": self.networks, "endpoints": self.endpoints,
                       "endpoints6": self.endpoints6, "joined": sorted(self.joined),
                       "pools6": self.pools6,
                       "held": {k: sorted(v) for k, v in self.held.items()}}, f)
        os.replace(tmp, self.state_file)


PROTOCOLS = {6: "tcp", 17: "udp"}


def port_bindings(value: object) -> list[str]:
    """Docker's ``com.docker.network.portmap`` (its PortBinding list) as sdnctl's published
    ports, ``[HOST_IP:]HOST_PORT:CONTAINER_PORT/PROTO``."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise PluginError(f"Options.{PORTMAP}: expected a list")
    ports = []
    for i, binding in enumerate(value):
        where = f"Options.{PORTMAP}[{i}]"
        if not isinstance(binding, dict):
            raise PluginError(f"{where}: expected an object")
        numbers = [binding.get(k) for k in ("Proto", "Port", "HostPort")]
        numbers.append(binding.get("HostPortEnd") or numbers[2])
        host_ip = binding.get("HostIP") or ""
        if any(not isinstance(v, int) or isinstance(v, bool) for v in numbers):
            raise PluginError(f"{where}: Proto, Port and HostPort must be numbers")
        proto, port, host_port, end = (int(v) for v in numbers)  # type: ignore[arg-type]
        if not isinstance(host_ip, str):
            raise PluginError(f"{where}: HostIP must be a string")
        if proto not in PROTOCOLS:
            raise PluginError(f"{where}: protocol {proto} is not published by sdnctl (tcp, "
                              "udp)")
        if not 0 < port < 65536:
            raise PluginError(f"{where}: container port {port} is out of range")
        if not 0 < host_port < 65536 or end != host_port:
            raise PluginError(f"{where}: sdnctl publishes one host port per container port: "
                              f"-p HOST_PORT:{port} (not a range, not an ephemeral port)")
        if host_ip:
            try:
                host_ip = str(ipaddress.IPv4Address(host_ip))
            except ValueError:
                raise PluginError(f"{where}: HostIP {host_ip!r} is not an IPv4 address") \
                    from None
            if host_ip == "0.0.0.0":
                host_ip = ""
        ports.append(f"{host_ip + ':' if host_ip else ''}{host_port}:{port}/{PROTOCOLS[proto]}")
    return ports


# -- the socket ---------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > REQUEST_MAX:
            status, answer = 413, {"Err": f"request larger than {REQUEST_MAX} bytes"}
        else:
            body = self.rfile.read(length) if length else b""
            status, answer = self.server.plugin.call(self.path.lstrip("/"), body)
        out = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("docker plugin: " + format, *args)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, plugin: Plugin) -> None:
        self.plugin = plugin
        super().__init__(path, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        conn, _ = super().get_request()
        return conn, ("docker", 0)  # BaseHTTPRequestHandler wants a (host, port)


class DockerPluginServer:
    """The plugin's socket (mode 0600: root's dockerd) and spec file; a thread serves it."""

    def __init__(self, plugin: Plugin, socket_path: str, spec_path: str = "") -> None:
        self.plugin = plugin
        self.socket_path = socket_path
        self.spec_path = spec_path
        self.server: _Server | None = None

    def start(self) -> None:
        os.makedirs(os.path.dirname(self.socket_path) or ".", exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self.server = _Server(self.socket_path, self.plugin)
        os.chmod(self.socket_path, 0o600)
        threading.Thread(target=self.server.serve_forever, name="docker-plugin",
                         daemon=True).start()
        if self.spec_path:
            os.makedirs(os.path.dirname(self.spec_path) or ".", exist_ok=True)
            tmp = self.spec_path + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"unix://{self.socket_path}\n")
            os.replace(tmp, self.spec_path)
        log.info("Docker plugin on %s%s", self.socket_path,
                 f" (spec {self.spec_path})" if self.spec_path else "")

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        for path in (self.socket_path, self.spec_path):
            if path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


def docker_network_name(docker_host: str, nid: str, timeout: float = NAMING_TIMEOUT) -> str:
    """The name dockerd at ``docker_host`` (unix:///path) gives network ``nid``; it answers
    once the network is stored, just after the driver's CreateNetwork returned."""
    path = docker_host.removeprefix("unix://")
    if not docker_host.startswith("unix://") or not nid.isalnum():
        raise ValueError(f"cannot ask {docker_host!r} about network {nid[:12]!r}")
    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection("docker", timeout=5)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(5)
            sock.connect(path)
            conn.sock = sock
            conn.request("GET", f"/networks/{nid}")
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status == 200:
            name = json.loads(body).get("Name")
            if not isinstance(name, str) or not name:
                raise ValueError(f"dockerd gave network {nid[:12]} no name")
            return name
        if time.monotonic() > deadline:
            raise PluginError(f"dockerd does not know network {nid[:12]} "
                              f"(HTTP {response.status})")
        time.sleep(0.05)


# -- Docker's firewall ----------------------------------------------------------------------------

IPTABLES = "iptables"


def accept_in_docker_user(bridge: str) -> None:
    """Docker's iptables rules set ``FORWARD`` policy DROP and jump first to ``DOCKER-USER``,
    the chain it leaves to users: accept what enters and leaves our bridge there. Nothing to do
    when dockerd runs without its iptables rules (no such chain)."""
    binary = shutil.which(IPTABLES)
    if binary is None:
        return
    if subprocess.run([binary, "-w", "-n", "-L", "DOCKER-USER"], capture_output=True,
                      check=False).returncode != 0:
        return
    for rule in (["-i", bridge, "-j", "ACCEPT"], ["-o", bridge, "-j", "ACCEPT"]):
        present = subprocess.run([binary, "-w", "-C", "DOCKER-USER", *rule],
                                 capture_output=True, check=False).returncode == 0
        if not present:
            done = subprocess.run([binary, "-w", "-I", "DOCKER-USER", *rule],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise KernelError(f"could not accept {bridge} in DOCKER-USER: "
                                  f"{done.stderr.strip()}")

