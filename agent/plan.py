"""The planner: (desired, observed) -> the minimal list of actions. Pure: no I/O, no root.

Level-triggered: it never assumes what it did last time; it compares what the controller wants
with what the kernel and the process table hold now, and names only the difference. Running it
on a host that already matches returns nothing, which is how an agent that restarts adopts what
exists without touching it.

Order matters and is fixed here: forwarding and firewall first, then containers that must go,
then bridges, then each wanted container (namespace, link, process), then bridges that must go.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.desired import DesiredContainer, DesiredNetwork, DesiredState
from agent.kernel.links import ObservedContainerNet, ObservedLink
from agent.kernel.names import ALIAS_PREFIX, bridge_alias, bridge_name, veth_alias, veth_name

# -- what the kernel and the process table hold (filled in by agent.reconcile) ---------------

@dataclass(frozen=True)
class ContainerState:
    netns: bool  # the agent's namespace file for it exists
    net: ObservedContainerNet | None  # its interface inside that namespace, if present
    started: bool  # a process was started for it (a record exists)
    running: bool  # that process is alive
    spec: str  # the spec hash the process was started with ("" if never)
    pid: int = 0  # of the running process (0 when not running)


@dataclass(frozen=True)
class Observed:
    links: dict[str, ObservedLink] = field(default_factory=dict)  # links we own, by name
    containers: dict[str, ContainerState] = field(default_factory=dict)
    firewall: str | None = None  # fingerprint of our nftables table (None: absent)
    ip_forward: bool = False


# -- actions ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class EnableForwarding:
    pass


@dataclass(frozen=True)
class SyncFirewall:
    networks: tuple[DesiredNetwork, ...]


@dataclass(frozen=True)
class EnsureBridge:
    network: DesiredNetwork


@dataclass(frozen=True)
class RemoveLink:
    ifname: str


@dataclass(frozen=True)
class SetupContainer:
    """Namespace, link and process as needed; rolled back as a whole if a step fails."""

    container: DesiredContainer
    network: DesiredNetwork
    netns: bool  # create the namespace
    attach: bool  # create or repair the veth, address and route
    start: bool  # start the process
    stop_first: bool  # a process with an outdated spec runs: stop it before starting anew


@dataclass(frozen=True)
class RemoveContainer:
    name: str
    stop: bool  # a process runs


Action = EnableForwarding | SyncFirewall | EnsureBridge | RemoveLink | SetupContainer | \
    RemoveContainer


def plan(desired: DesiredState, observed: Observed, firewall_fingerprint: str) -> list[Action]:
    """Actions that turn ``observed`` into ``desired``; empty when they already agree.

    ``firewall_fingerprint`` is what ``observed.firewall`` reads when the table is as desired.
    Until the first snapshot has arrived nothing is removed: an agent that just started must
    not mistake "not told yet" for "not wanted".
    """
    actions: list[Action] = []
    networks = {n: net for n, net in desired.networks.items() if net.driver == "bridge"}
    if networks and not observed.ip_forward:
        actions.append(EnableForwarding())
    # No bridge network: no table at all (an absent table is what "nothing of ours" looks like).
    wanted_firewall = firewall_fingerprint if networks else None
    if desired.synced and observed.firewall != wanted_firewall:
        actions.append(SyncFirewall(tuple(sorted(networks.values(), key=lambda n: n.name))))

    # Links that go with a removed container's namespace need no action of their own.
    goes_with_netns: set[str] = set()
    if desired.synced:
        for name, state in sorted(observed.containers.items()):
            if name not in desired.containers:
                actions.append(RemoveContainer(name, stop=state.running))
                if state.netns:
                    goes_with_netns.add(veth_alias(name, ""))

    for net in networks.values():
        if bridge_needs_repair(net, observed.links.get(bridge_name(net.name))):
            actions.append(EnsureBridge(net))

    for _, ctr in sorted(desired.containers.items()):
        ctr_net = networks.get(ctr.network)
        if ctr_net is None or not ctr.ip:
            continue  # its network's lease has not arrived yet
        action = plan_container(ctr, ctr_net, observed)
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


def bridge_needs_repair(net: DesiredNetwork, link: ObservedLink | None) -> bool:
    return (
        link is None
        or link.kind != "bridge"
        or link.alias != bridge_alias(net.name)
        or link.mtu != net.mtu
        or not link.up
        or link.addresses != (net.gateway_cidr,)
    )


def plan_container(ctr: DesiredContainer, net: DesiredNetwork,
                   observed: Observed) -> SetupContainer | None:
    state = observed.containers.get(ctr.name)
    host_link = observed.links.get(veth_name(ctr.name, ctr.interface))
    netns = state is None or not state.netns
    attach = netns or veth_needs_repair(ctr, net, host_link, state)
    spec_changed = state is not None and state.started and state.spec != ctr.spec_hash()
    # A container whose process exited stays exited (Docker's "restart: no"); one whose spec
    # changed is restarted.
    start = state is None or not state.started or spec_changed
    stop_first = spec_changed and state is not None and state.running
    if not (netns or attach or start):
        return None
    return SetupContainer(ctr, net, netns=netns, attach=attach, start=start,
                          stop_first=stop_first)


def veth_needs_repair(ctr: DesiredContainer, net: DesiredNetwork, link: ObservedLink | None,
                      state: ContainerState | None) -> bool:
    if link is None or state is None or state.net is None:
        return True
    host_ok = (link.kind == "veth" and link.alias == veth_alias(ctr.name, ctr.interface)
               and link.master == bridge_name(net.name) and link.mtu == net.mtu and link.up)
    inner = state.net
    inner_ok = (inner.up and inner.mtu == net.mtu and inner.addresses == (ctr.address_cidr,)
                and inner.gateway == ctr.gateway)
    return not (host_ok and inner_ok)


def wanted_links(desired: DesiredState, networks: dict[str, DesiredNetwork]) -> set[str]:
    wanted = {bridge_name(n) for n in networks}
    wanted |= {veth_name(c.name, c.interface) for c in desired.containers.values()}
    return wanted
