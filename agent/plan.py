"""The planner: (desired, observed) -> the minimal list of actions. Pure: no I/O, no root.

Level-triggered: it never assumes what it did last time; it compares what the controller wants
with what the kernel and the process table hold now, and names only the difference. Running it
on a host that already matches returns nothing, which is how an agent that restarts adopts what
exists without touching it.

Order matters and is fixed here: forwarding first, then containers that must go, then bridges,
then the firewall (which names the bridges), then each wanted container (sandbox, link,
process; those that own a sandbox before those joined to one), then links that must go. What
differs between network modes is asked of agent.modes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.desired import DesiredContainer, DesiredNetwork, DesiredPeer, DesiredState
from agent.drivers import DRIVERS, driver_of
from agent.modes import MODES
from agent.names import (
    ALIAS_PREFIX,
    bridge_alias,
    bridge_name,
    veth_alias,
    veth_name,
    vxlan_alias,
    vxlan_name,
)
from agent.nftrules import BridgeNet, FirewallSpec, PortGuard, PortRule, VxlanFilter
from agent.nftrules import fingerprint as firewall_fingerprint
from agent.observed import ObservedContainerNet, ObservedLink, ObservedPeers, ObservedVxlan

#: Drivers whose containers hang off a local Linux bridge: all of them (an overlay adds a VXLAN).
LOCAL_BRIDGE_DRIVERS = tuple(DRIVERS)

#: A container with a restart policy is started again at most this often (seconds).
RESTART_DELAY = 1.0

# -- what the kernel and the process table hold (filled in by agent.reconcile) ---------------

@dataclass(frozen=True)
class ContainerState:
    netns: bool  # its sandbox (pinned network, UTS and IPC namespaces) exists
    net: ObservedContainerNet | None  # its interface inside that namespace, if present
    started: bool  # a process was started for it (a record exists)
    running: bool  # that process is alive
    spec: str  # the spec hash the process was started with ("" if never)
    pid: int = 0  # of the running process (0 when not running)
    started_at: float = 0.0  # when it was last started (seconds since the epoch)
    exit_code: int | None = None  # of its last run, when it exited and the code is known


@dataclass(frozen=True)
class Observed:
    links: dict[str, ObservedLink] = field(default_factory=dict)  # links we own, by name
    containers: dict[str, ContainerState] = field(default_factory=dict)
    firewall: str | None = None  # fingerprint of our nftables table (None: absent)
    #: br_netfilter hands bridged IPv4 to conntrack here (``FirewallSpec.bridged_tracked``)
    bridged_tracked: bool = False
    ip_forward: bool = False
    ip6_forward: bool = False  # read only when a network is dual-stack
    vxlans: dict[str, ObservedVxlan] = field(default_factory=dict)  # our VXLAN devices
    peers: dict[str, ObservedPeers] = field(default_factory=dict)  # by VXLAN device


# -- actions ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class EnableForwarding:
    ipv6: bool = False  # IPv6 forwarding too: some network is dual-stack (issue 20)


@dataclass(frozen=True)
class SyncFirewall:
    spec: FirewallSpec  # empty networks: remove our tables


@dataclass(frozen=True)
class EnsureBridge:
    network: DesiredNetwork


@dataclass(frozen=True)
class RemoveLink:
    ifname: str


@dataclass(frozen=True)
class EnsureVxlan:
    network: DesiredNetwork


@dataclass(frozen=True)
class SetPeer:
    """One route, one permanent neighbour and one FDB entry towards another host's VTEP."""

    device: str
    peer: DesiredPeer


@dataclass(frozen=True)
class RemovePeerRoute:
    device: str
    dst: str


@dataclass(frozen=True)
class RemoveNeighbour:
    device: str
    ip: str


@dataclass(frozen=True)
class RemoveFdb:
    device: str
    mac: str
    dst: str


@dataclass(frozen=True)
class SetupContainer:
    """Sandbox, link and process as needed; rolled back as a whole if a step fails."""

    container: DesiredContainer
    network: DesiredNetwork | None  # the bridge network of a bridged container
    netns: bool  # create the sandbox
    attach: bool  # create or repair the veth, address and route
    start: bool  # start the process
    stop_first: bool  # a process with an outdated spec runs: stop it before starting anew
    drop_sandbox: bool = False  # it has a sandbox its mode does not want (after stopping)
    stale_addresses: tuple[str, ...] = ()  # addresses it leaves: flush their conntrack entries


@dataclass(frozen=True)
class RemoveContainer:
    name: str
    stop: bool  # a process runs
    addresses: tuple[str, ...] = ()  # it had: flush their conntrack entries


Action = EnableForwarding | SyncFirewall | EnsureBridge | RemoveLink | SetupContainer | \
    RemoveContainer | EnsureVxlan | SetPeer | RemovePeerRoute | RemoveNeighbour | RemoveFdb


def describe(action: Action) -> str:
    """A short line naming what ``action`` makes or removes (for the agent's log)."""
    match action:
        case EnableForwarding():
            return "sysctl net.ipv4.ip_forward=1" + (
                " net.ipv6.conf.all.forwarding=1" if action.ipv6 else "")
        case SyncFirewall(spec):
            return "nftables tables sdnctl" + ("" if spec.networks else " (remove)")
        case EnsureBridge(net):
            return f"bridge {bridge_name(net.name)} of network {net.name!r}"
        case RemoveLink(ifname):
            return f"remove link {ifname}"
        case EnsureVxlan(net):
            return f"vxlan {vxlan_name(net.name)} of network {net.name!r}"
        case SetPeer(device, peer):
            return f"peer {peer.host} on {device}: route {peer.subnet} via {peer.vtep_ip}, " \
                f"neighbour {peer.vtep_mac}, fdb -> {peer.underlay_ip}"
        case RemovePeerRoute(device, dst):
            return f"remove route {dst} on {device}"
        case RemoveNeighbour(device, ip):
            return f"remove neighbour {ip} on {device}"
        case RemoveFdb(device, mac, dst):
            return f"remove fdb {mac} -> {dst} on {device}"
        case SetupContainer():
            parts = [name for name, on in (("sandbox", action.netns), ("link", action.attach),
                                           ("drop sandbox", action.drop_sandbox),
                                           ("stop", action.stop_first),
                                           ("start", action.start)) if on]
            return f"container {action.container.name!r}: {', '.join(parts)}"
        case RemoveContainer(name):
            return f"remove container {name!r}"
    return repr(action)


def is_repair(action: Action) -> bool:
    """Whether ``action``, planned while the desired state stood still, mends the kernel (drift)
    rather than (re)starting a process, which restart policies do on their own."""
    if isinstance(action, SetupContainer):
        return action.netns or action.attach or action.drop_sandbox
    return True


def plan(desired: DesiredState, observed: Observed, now: float = 0.0) -> list[Action]:
    """Actions that turn ``observed`` into ``desired``; empty when they already agree.

    ``now`` (seconds since the epoch) decides whether an exited container may restart yet.
    Until the first snapshot has arrived nothing is removed: an agent that just started must
    not mistake "not told yet" for "not wanted".
    """
    actions: list[Action] = []
    networks = {n: net for n, net in desired.networks.items()
                if net.driver in LOCAL_BRIDGE_DRIVERS}
    ipv6 = any(net.subnet6 for net in networks.values())
    if networks and (not observed.ip_forward or (ipv6 and not observed.ip6_forward)):
        actions.append(EnableForwarding(ipv6))

    # Links that go with a removed container's namespace need no action of their own.
    goes_with_netns: set[str] = set()
    if desired.synced:
        for name, state in sorted(observed.containers.items()):
            if name not in desired.containers:
                actions.append(RemoveContainer(name, stop=state.running,
                                               addresses=_addresses(state)))
                if state.netns:
                    goes_with_netns.add(veth_alias(name, ""))

    for net in networks.values():
        if bridge_needs_repair(net, observed.links.get(bridge_name(net.name))):
            actions.append(EnsureBridge(net))
        if driver_of(net.driver).spans_hosts:
            actions += plan_overlay(net, desired, observed)

    # After the bridges (the firewall sets sysctls on them), before containers start.
    # No bridge network: no table at all (an absent table is what "nothing of ours" looks like).
    spec = firewall_spec(desired, observed.bridged_tracked)
    wanted_firewall = firewall_fingerprint(spec) if networks else None
    if desired.synced and observed.firewall != wanted_firewall:
        actions.append(SyncFirewall(spec))

    # Sandbox owners first: a joined container needs its donor's namespaces to exist.
    for ctr in sorted(desired.containers.values(),
                      key=lambda c: (not MODES[c.mode].owns_sandbox, c.name)):
        action = plan_container(ctr, desired, observed, now)
        if action is not None:
            actions.append(action)

    if desired.synced:
        wanted = wanted_links(desired, networks)
        for ifname, link in sorted(observed.links.items()):
            alias = link.alias or ""
            if ifname not in wanted and alias.startswith(ALIAS_PREFIX) and \
                    not alias.startswith(tuple(goes_with_netns)):
                actions.append(RemoveLink(ifname))
    return actions


def plan_peers(desired: DesiredState, observed: Observed) -> list[Action]:
    """What a change of overlays' peers alone needs (``Changed.PEERS``, issue 21): each
    overlay's peer entries, then the firewall (its VXLAN sets hold the members), as
    :func:`plan` would plan them. Reads only ``observed``'s VXLAN devices, their peers and
    the firewall. An ``EnsureVxlan`` among them means a whole pass is needed."""
    actions: list[Action] = []
    for net in desired.networks.values():
        if net.driver in LOCAL_BRIDGE_DRIVERS and driver_of(net.driver).spans_hosts:
            actions += plan_overlay(net, desired, observed)
    spec = firewall_spec(desired, observed.bridged_tracked)
    if desired.synced and observed.firewall != firewall_fingerprint(spec):
        actions.append(SyncFirewall(spec))
    return actions


def plan_overlay(net: DesiredNetwork, desired: DesiredState,
                 observed: Observed) -> list[Action]:
    """The VXLAN device, then its peers: stale entries out first, then what is missing.

    Entries are keyed as the kernel keys them: a route by destination, a neighbour by address,
    an FDB entry by (MAC, destination). A changed value for a kept key is set in place; a key
    nobody wants any more (a host that left, an old underlay address or MAC) is removed.
    """
    device = vxlan_name(net.name)
    actions: list[Action] = []
    have = observed.peers.get(device, ObservedPeers())
    if vxlan_needs_repair(net, desired, observed.vxlans.get(device)):
        actions.append(EnsureVxlan(net))
        # A device whose VNI, port or local address changes is recreated, and its entries go
        # with it: set every peer again (a no-op for entries that survived an in-place fix).
        have = ObservedPeers()
    entries = [p.entries() for p in net.peers]  # dual-stack: a route, a neighbour per family
    routes = {dst for e in entries for dst, _ in e.routes()}
    neighbours = {ip for e in entries for ip, _ in e.neighbours()}
    fdb = {(p.vtep_mac, p.underlay_ip) for p in net.peers}
    actions += [RemovePeerRoute(device, dst) for dst, _ in have.routes if dst not in routes]
    actions += [RemoveNeighbour(device, ip) for ip, _ in have.neighbours if ip not in neighbours]
    actions += [RemoveFdb(device, mac, dst) for mac, dst in have.fdb if (mac, dst) not in fdb]
    have_routes, have_neighbours, have_fdb = set(have.routes), set(have.neighbours), set(have.fdb)
    for peer, entry in zip(net.peers, entries, strict=True):
        if (not have_routes.issuperset(entry.routes())
                or not have_neighbours.issuperset(entry.neighbours())
                or (peer.vtep_mac, peer.underlay_ip) not in have_fdb):
            actions.append(SetPeer(device, peer))
    return actions


def vxlan_needs_repair(net: DesiredNetwork, desired: DesiredState,
                       vx: ObservedVxlan | None) -> bool:
    local = desired.local
    return (
        vx is None
        or vx.alias != vxlan_alias(net.name)
        or vx.vni != net.vni
        or vx.port != net.vxlan_port
        or vx.local != local.underlay_ip
        or vx.mac != local.vtep_mac
        or vx.mtu != net.mtu
        or not vx.up
        or vx.addresses != net.vtep_cidrs
    )


def firewall_spec(desired: DesiredState, bridged_tracked: bool = False) -> FirewallSpec:
    """The host's nftables rules in kernel terms: NAT, isolation, published ports, anti-spoofing.

    Only bridged containers whose network this host has appear; a pair of networks is allowed
    when either lists the other and this host has both. ``bridged_tracked``: conntrack sees
    frames bridged between containers here (as the firewall last observed), so the bridge
    table counts no flows of its own.
    """
    networks = {n.name: n for n in desired.networks.values()
                if n.driver in LOCAL_BRIDGE_DRIVERS}
    ordered = sorted(networks.values(), key=lambda n: n.name)
    bridges = tuple(BridgeNet(n.name, bridge_name(n.name), n.subnet, n.masquerade, n.internal,
                              cidr=n.cidr if driver_of(n.driver).spans_hosts else "",
                              vxlan=driver_of(n.driver).tunnel_device(n.name),
                              subnet6=n.subnet6, cidr6=n.cidr6, masquerade6=n.masquerade6)
                    for n in ordered)
    vxlan = tuple(VxlanFilter(n.vxlan_port, n.vni,
                              tuple(sorted({p.underlay_ip for p in n.peers})))
                  for n in ordered if driver_of(n.driver).spans_hosts)
    allowed = sorted({tuple(sorted((n.name, other))) for n in networks.values()
                      for other in n.allow if other in networks and other != n.name})
    ports: list[PortRule] = []
    guards: list[PortGuard] = []
    for ctr in sorted(desired.containers.values(), key=lambda c: c.name):
        network = MODES[ctr.mode].bridge_network(ctr)
        if network is None or network not in networks or not ctr.addressed:
            continue
        guards.append(PortGuard(ctr.name, veth_name(ctr.name, ctr.interface),
                                ctr.mac, ctr.ip, ctr.ip6))
        ports += [PortRule(ctr.name, bridge_name(network), ctr.ip, p.protocol, p.host_ip,
                           p.host_port, p.container_port, ctr.ip6) for p in ctr.ports]
    return FirewallSpec(bridges, tuple((a, b) for a, b in allowed), tuple(ports), tuple(guards),
                        vxlan=vxlan, bridged_tracked=bridged_tracked)


def bridge_needs_repair(net: DesiredNetwork, link: ObservedLink | None) -> bool:
    return (
        link is None
        or link.kind != "bridge"
        or link.alias != bridge_alias(net.name)
        or link.mtu != net.mtu
        or not link.up
        or link.addresses != net.gateway_cidrs
    )


def blocked(ctr: DesiredContainer, desired: DesiredState) -> str | None:
    """Why ``ctr`` cannot be set up yet, or None."""
    mode = MODES[ctr.mode]
    network = mode.bridge_network(ctr)
    if network is not None:
        net = desired.networks.get(network)
        if net is None or net.driver not in LOCAL_BRIDGE_DRIVERS or not ctr.addressed:
            return f"waiting for this host's lease of network {network!r}"
    return mode.waiting_for(ctr, desired.containers)


def plan_container(ctr: DesiredContainer, desired: DesiredState, observed: Observed,
                   now: float = 0.0) -> SetupContainer | None:
    if blocked(ctr, desired) is not None:
        return None
    if ctr.cni_netns:
        return plan_attachment(ctr, desired, observed)
    mode = MODES[ctr.mode]
    network = mode.bridge_network(ctr)
    net = desired.networks[network] if network is not None else None
    state = observed.containers.get(ctr.name)
    has_sandbox = state is not None and state.netns
    running = state is not None and state.running
    started = state is not None and state.started
    create = mode.owns_sandbox and not has_sandbox
    drop = not mode.owns_sandbox and has_sandbox
    attach = net is not None and (create or veth_needs_repair(
        ctr, net, observed.links.get(veth_name(ctr.name, ctr.interface)), state))
    spec_changed = started and state is not None and state.spec != ctr.spec_hash()
    # Docker's "restart: no": an exited process stays exited. A changed spec, or a sandbox that
    # is rebuilt under a running process, restarts it. A stopped container only stops.
    restart_due = (state is not None and wants_restart(ctr, state)
                   and now - state.started_at >= RESTART_DELAY)
    rebuilt = (create or drop) and running
    start = (not started or spec_changed or restart_due or rebuilt) and not ctr.stopped
    stop_first = running and (spec_changed or rebuilt or ctr.stopped)
    stale = tuple(a for a in _addresses(state) if a not in ctr.address_cidrs) if attach else ()
    if not (create or drop or attach or start or stop_first):
        return None
    return SetupContainer(ctr, net, netns=create, attach=attach, start=start,
                          stop_first=stop_first, drop_sandbox=drop, stale_addresses=stale)


def plan_attachment(ctr: DesiredContainer, desired: DesiredState,
                    observed: Observed) -> SetupContainer | None:
    """A CNI attachment: only its veth, into the runtime's namespace, built and repaired like
    any other; no sandbox and no process of ours. A namespace that is gone is left to the
    agent's CNI service, which asks the controller to forget the attachment (the runtime forgot
    its DEL). A Docker endpoint's veth is the Docker plugin's to build at Join, and its
    container side is dockerd's (issue 18): the reconciler repairs only the host side (bridge,
    MTU, up), keeps the guards, and removes the pair when the endpoint is forgotten; a host side
    that is gone took the sandbox's side with it (the Docker plugin detaches that endpoint)."""
    net = desired.networks[ctr.target]
    if ctr.cni_docker:  # only the host side is ours to repair; a missing one is garbage
        link = observed.links.get(veth_name(ctr.name, ctr.interface))
        if link is None or (link.kind == "veth" and link.master == bridge_name(net.name)
                            and link.mtu == net.mtu and link.up
                            and link.alias == veth_alias(ctr.name, ctr.interface)):
            return None
        return SetupContainer(ctr, net, netns=False, attach=True, start=False,
                              stop_first=False)
    state = observed.containers.get(ctr.name)
    if state is None or not state.netns:
        return None
    if not veth_needs_repair(ctr, net, observed.links.get(veth_name(ctr.name, ctr.interface)),
                             state):
        return None
    stale = tuple(a for a in _addresses(state) if a not in ctr.address_cidrs)
    return SetupContainer(ctr, net, netns=False, attach=True, start=False, stop_first=False,
                          stale_addresses=stale)


def wants_restart(ctr: DesiredContainer, state: ContainerState) -> bool:
    """Its process exited and its restart policy asks for another run (``on-failure``: a
    non-zero exit code, or one nobody saw)."""
    if ctr.stopped or not state.started or state.running or ctr.restart == "no":
        return False
    return ctr.restart == "always" or state.exit_code != 0


def restart_pending(desired: DesiredState, observed: Observed) -> bool:
    """Some exited container will be restarted once RESTART_DELAY has passed."""
    for ctr in desired.containers.values():
        state = observed.containers.get(ctr.name)
        if state is not None and wants_restart(ctr, state):
            return True
    return False


def _addresses(state: ContainerState | None) -> tuple[str, ...]:
    return state.net.addresses if state is not None and state.net is not None else ()


def veth_needs_repair(ctr: DesiredContainer, net: DesiredNetwork, link: ObservedLink | None,
                      state: ContainerState | None) -> bool:
    if link is None or state is None or state.net is None:
        return True
    host_ok = (link.kind == "veth" and link.alias == veth_alias(ctr.name, ctr.interface)
               and link.master == bridge_name(net.name) and link.mtu == net.mtu and link.up)
    inner = state.net
    inner_ok = (inner.up and inner.mtu == net.mtu and inner.addresses == ctr.address_cidrs
                and inner.gateway == ctr.gateway and inner.gateway6 == (ctr.gateway6 or None)
                and inner.mac == ctr.mac)
    return not (host_ok and inner_ok)


def wanted_links(desired: DesiredState, networks: dict[str, DesiredNetwork]) -> set[str]:
    wanted = {bridge_name(n) for n in networks}
    wanted |= {driver_of(net.driver).tunnel_device(n) for n, net in networks.items()} - {""}
    wanted |= {veth_name(c.name, c.interface) for c in desired.containers.values()
               if MODES[c.mode].bridge_network(c) is not None}
    return wanted
