"""Observe the kernel, plan, apply: one reconciliation pass.

The planner (agent.plan) is pure; this module is the thin part that reads state for it and
carries out its actions: the network side (bridges, VXLAN devices and their peers, the firewall,
forwarding) through agent.kernel, the container side through agent.containers. One failed action
does not stop the rest of the pass; its error is reported for its container and the pass after
retries it.

``attach_now`` is CNI ADD's fast path (issue 17, agent/cni.py): one attachment built between two
passes, on the reconciler's thread, with the pass's own kernel objects (so the firewall's memory
of what it wrote stays true): its veth, then the firewall with its guard (a delta of one guard),
without observing the host or planning. It does only what the planner would plan for that
attachment on a host the last pass left realised, and declines (the caller waits for a pass)
whenever more could be needed: the network's bridge not realised by a pass yet, or with another
lease; network policy in force (the policy table's sets come with the stream); bandwidth limits.
The next pass then finds the attachment as it would have built it: no action.

``sync_peers`` is the pass of a change of overlays' peers alone (issue 21: a host joined, left or
moved, and every member hears of it): the peer entries and the firewall's member list, planned
by ``plan.plan_peers`` against the VXLAN devices the last pass observed and the entries written
since, with no link dump and no container read. It declines when a device was made or changed
since that pass; a whole pass then runs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent import plan as p
from agent.containers import PARALLEL_STARTS, Containers
from agent.desired import DesiredContainer, DesiredNetwork, DesiredPeer, DesiredState, LocalHost
from agent.drivers import driver_of
from agent.imagestore import ImageStore
from agent.kernel.links import ObservedPeers, ObservedVxlan, PreparedVeth
from agent.kernel.policyfw import PolicyFirewall
from agent.kernel.seams import FirewallOps, LinkOps, SysctlOps
from agent.kernel.shaping import Shape, Shaper
from agent.names import (
    bridge_alias,
    bridge_name,
    container_mac,
    veth_alias,
    veth_name,
    vxlan_alias,
    vxlan_name,
)
from agent.netpolicy import build as build_policy_tables
from agent.runtime import Runtime
from sdnctl.api.model import ContainerStatus

log = logging.getLogger("sdnctl.agent")


@dataclass(frozen=True)
class SetPeers:
    """Consecutive ``SetPeer`` actions of one device, applied as one batch (``group_peers``)."""

    device: str
    peers: tuple[DesiredPeer, ...]


@dataclass(frozen=True)
class RemovePeers:
    """Consecutive ``RemovePeerRoute``, ``RemoveNeighbour`` and ``RemoveFdb`` of one device,
    applied as one batch (``group_peers``)."""

    device: str
    routes: tuple[str, ...] = ()
    neighbours: tuple[str, ...] = ()
    fdb: tuple[tuple[str, str], ...] = ()


def _ip6_forward(desired: DesiredState, sysctls: SysctlOps) -> bool:
    """IPv6 forwarding in this namespace, read only when a network of it is dual-stack."""
    if not any(net.subnet6 for net in desired.networks.values()):
        return False
    return sysctls.read_sysctl("net.ipv6.conf.all.forwarding") == "1"


Grouped = p.Action | SetPeers | RemovePeers


def group_peers(actions: Iterable[p.Action]) -> list[Grouped]:
    """``actions`` with each run of consecutive ``SetPeer`` of one device as one ``SetPeers``,
    and each run of its entries' removals as one ``RemovePeers`` (pure; the order of
    everything else is kept)."""
    grouped: list[Grouped] = []
    for action in actions:
        last = grouped[-1] if grouped else None
        match action:
            case p.SetPeer(device, peer):
                if isinstance(last, SetPeers) and last.device == device:
                    grouped[-1] = SetPeers(device, (*last.peers, peer))
                else:
                    grouped.append(SetPeers(device, (peer,)))
            case p.RemovePeerRoute(device) | p.RemoveNeighbour(device) | p.RemoveFdb(device):
                if isinstance(last, RemovePeers) and last.device == device:
                    grouped[-1] = _with_removal(last, action)
                else:
                    grouped.append(_with_removal(RemovePeers(device), action))
            case _:
                grouped.append(action)
    return grouped


@dataclass(frozen=True)
class SetupContainers:
    """Consecutive ``SetupContainer`` actions, applied together (``group_setups``): their
    starts run in parallel."""

    actions: tuple[p.SetupContainer, ...]


def group_setups(actions: Iterable[Grouped]) -> list[Grouped | SetupContainers]:
    """``actions`` with each run of consecutive ``SetupContainer`` as one ``SetupContainers``
    (pure; the order of everything else is kept). The planner puts every setup in one run,
    sandbox owners first."""
    grouped: list[Grouped | SetupContainers] = []
    for action in actions:
        last = grouped[-1] if grouped else None
        if isinstance(action, p.SetupContainer):
            if isinstance(last, SetupContainers):
                grouped[-1] = SetupContainers((*last.actions, action))
            else:
                grouped.append(SetupContainers((action,)))
        else:
            grouped.append(action)
    return grouped


def _with_removal(batch: RemovePeers, action: p.Action) -> RemovePeers:
    match action:
        case p.RemovePeerRoute(_, dst):
            return dataclasses.replace(batch, routes=(*batch.routes, dst))
        case p.RemoveNeighbour(_, ip):
            return dataclasses.replace(batch, neighbours=(*batch.neighbours, ip))
        case p.RemoveFdb(_, mac, dst):
            return dataclasses.replace(batch, fdb=(*batch.fdb, (mac, dst)))
    raise TypeError(f"not a removal of a peer entry: {action!r}")


@dataclass
class Outcome:
    actions: list[p.Action]
    #: The containers as they are after the actions; the rest (links, firewall, VXLAN peers) as
    #: read before them. With no actions, the one read before them.
    observed: p.Observed
    errors: dict[str, str] = field(default_factory=dict)  # container (or "") -> message
    restart_pending: bool = False  # an exited container will be restarted soon: look again



class Reconciler:
    """Owns the kernel façade; use it from one thread only (its netlink sockets are per thread).
    ``containers`` is the container side (agent.containers), built from the same arguments."""

    def __init__(self, run_dir: str, links: LinkOps, fw: FirewallOps, sysctls: SysctlOps,
                 stop_grace: float = 1.0, host_netns: str = "",
                 local: LocalHost | None = None, runtime: Runtime | None = None,
                 images: ImageStore | None = None, cgroup_parent: str = "",
                 userns_supported: bool | None = None,
                 policy_fw: PolicyFirewall | None = None,
                 shaper: Shaper | None = None, parallel_starts: int = PARALLEL_STARTS) -> None:
        self.local = local or LocalHost()
        self.sysctls = sysctls  # kernel/sysctl.py: the calling thread's namespace's
        self.policy_fw = policy_fw  # None: no network policy here (unit tests with fakes)
        self.shaper = shaper  # None: no bandwidth limits here (unit tests with fakes)
        self.links = links
        self.firewall = fw
        self.containers = Containers(run_dir, links, stop_grace, host_netns, runtime, images,
                                     cgroup_parent, userns_supported,
                                     parallel_starts=parallel_starts)
        # Peer entries of our VXLAN devices, by device: (its ifindex, its entries) as the last
        # dump showed them plus what this agent wrote since (see _observe_peers).
        self._peers: dict[str, tuple[int, ObservedPeers]] = {}
        # Our VXLAN devices as the last pass observed them (sync_peers' premise).
        self._vxlans: dict[str, ObservedVxlan] = {}
        # Networks whose bridge the last pass found or made as wanted (attach_now's premise).
        self._bridges: dict[str, DesiredNetwork] = {}
        self._helper = concurrent.futures.ThreadPoolExecutor(1, "attach-firewall")

    # -- observe ------------------------------------------------------------------------------

    def observe(self, desired: DesiredState, full: bool = True) -> p.Observed:
        """What the kernel and the process table hold. ``full=False`` takes our nftables tables
        to be as this agent last listed or wrote them (no nft listing): a pass woken by a
        change; the periodic full pass lists them and so finds drift."""
        if not full:
            return self._observe(desired, full, lambda: self.firewall.observe(fresh=False))
        # A full pass lists the firewall (hundreds of ms with 1,000 containers' guard rules;
        # libnftables lets go of the GIL): a helper thread waits for it while this one reads
        # netlink. It only reads.
        with concurrent.futures.ThreadPoolExecutor(1, "observe-firewall") as pool:
            return self._observe(desired, full, pool.submit(self.firewall.observe).result)

    def _observe(self, desired: DesiredState, full: bool,
                 firewall_state: Callable[[], str | None]) -> p.Observed:
        owned = {link.ifname: link for link in self.links.dump_owned()}
        containers = self.containers.observe(desired)
        vxlans = {name: link for name, link in owned.items() if isinstance(link, ObservedVxlan)}
        peers = self._observe_peers(vxlans, full)
        self._vxlans = vxlans
        firewall = firewall_state()  # (reads bridged_tracked too)
        return p.Observed(links=owned, containers=containers, firewall=firewall,
                          bridged_tracked=self.firewall.bridged_tracked,
                          ip_forward=self.sysctls.read_sysctl("net.ipv4.ip_forward") == "1",
                          ip6_forward=_ip6_forward(desired, self.sysctls),
                          vxlans=vxlans, peers=peers)

    def _observe_peers(self, vxlans: dict[str, ObservedVxlan],
                       full: bool) -> dict[str, ObservedPeers]:
        """Peer entries of our VXLAN devices. A full pass dumps them (so does any pass that
        finds a device it has no dump of, or one recreated since); the others take the last
        dump plus what this agent wrote since. The dumps grow with the number of hosts, and
        every agent runs a pass when one host joins: at 100 hosts they were most of its cost.
        Drift in them is found by the next full pass, as in the firewall's tables."""
        if full or any(self._peers.get(name, (None,))[0] != vx.index
                       for name, vx in vxlans.items()):
            dumped = self.links.observe_all_peers() if vxlans else {}
            self._peers = {name: (vx.index, dumped.get(name, ObservedPeers()))
                           for name, vx in vxlans.items()}
        return {name: self._peers[name][1] for name in vxlans}

    # -- apply --------------------------------------------------------------------------------

    def reconcile(self, desired: DesiredState, full: bool = True) -> Outcome:
        observed = self.observe(desired, full)
        actions = p.plan(desired, observed, time.time())
        outcome = Outcome(actions, observed)
        self.containers.stop_first(actions)
        # Policies first: a new container's address is in its sets before its process runs.
        policy_error = self.sync_policies(desired, full)
        if policy_error is not None:
            outcome.errors[""] = policy_error
        firewall_failed = policy_error is not None
        self.containers.hold_flushes()  # the conntrack entries of removed ones: once, at the end
        try:
            for action in group_setups(group_peers(actions)):
                if isinstance(action, SetupContainers):
                    self._setup_containers(action.actions, firewall_failed, outcome)
                    continue
                key = getattr(action, "name", "")
                try:
                    self.apply(action)
                except Exception as e:  # one failure must not stop the rest of the pass
                    log.warning("%s failed: %s", type(action).__name__, e, exc_info=True)
                    self._peers.clear()  # what it did is unknown: the next pass dumps again
                    outcome.errors[key] = f"{e}" + (f": {e.__cause__}" if e.__cause__ else "")
                    firewall_failed |= isinstance(action, p.SyncFirewall)
        finally:
            try:
                self.containers.release_flushes()
            except Exception as e:  # the containers are gone; their entries time out
                log.warning("conntrack flush failed: %s", e, exc_info=True)
                outcome.errors.setdefault("", f"conntrack: {e}"
                                          + (f": {e.__cause__}" if e.__cause__ else ""))
        self._sync_shaping(desired, full, outcome)
        self._note_bridges(desired, outcome)
        if actions:
            # Statuses and the restart decision read only the containers: links, firewall and
            # VXLAN peers are read again by the next pass, not now (that saved an nft process
            # and two netlink dumps on every pass that started a container).
            outcome.observed = dataclasses.replace(observed,
                                                   containers=self.containers.observe(desired))
        outcome.restart_pending = p.restart_pending(desired, outcome.observed)
        return outcome

    def _setup_containers(self, actions: Iterable[p.SetupContainer], firewall_failed: bool,
                          outcome: Outcome) -> None:
        """A run of consecutive setups (``Containers.setup_all``: their starts in parallel),
        their errors into ``outcome``."""
        todo = []
        for action in actions:
            if firewall_failed and action.network:
                # Its anti-spoofing guard is not in place: never run a container unguarded.
                outcome.errors[action.container.name] = \
                    "waiting for the firewall, which could not be applied"
            else:
                todo.append(action)
        for name, e in self.containers.setup_all(todo).items():
            log.warning("SetupContainer %s failed: %s", name, e, exc_info=e)
            self._peers.clear()  # what it did is unknown: the next pass dumps again
            outcome.errors[name] = f"{e}" + (f": {e.__cause__}" if e.__cause__ else "")

    def sync_peers(self, desired: DesiredState) -> Outcome | None:
        """The pass of a change of overlays' peers alone (``Changed.PEERS``, issue 21): their
        entries and the firewall's member list, planned against what the last pass observed
        of the VXLAN devices and what was written since (no dump, no container read). None,
        having done nothing, when a whole pass is needed: a device not seen as wanted by the
        last pass, or recreated since. The outcome's ``observed`` holds only what it read."""
        devices = {vxlan_name(n.name) for n in desired.networks.values()
                   if n.driver in p.LOCAL_BRIDGE_DRIVERS and driver_of(n.driver).spans_hosts}
        if not desired.synced or any(
                d not in self._vxlans or self._peers.get(d, (-1,))[0] != self._vxlans[d].index
                for d in devices):
            return None
        observed = p.Observed(links={}, containers={},
                              firewall=self.firewall.observe(fresh=False),
                              bridged_tracked=self.firewall.bridged_tracked,
                              vxlans=self._vxlans,
                              peers={d: self._peers[d][1] for d in devices})
        actions = p.plan_peers(desired, observed)
        if any(isinstance(a, p.EnsureVxlan) for a in actions):
            return None
        outcome = Outcome(actions, observed)
        for action in group_peers(actions):
            try:
                self.apply(action)
            except Exception as e:
                log.warning("%s failed: %s", type(action).__name__, e, exc_info=True)
                self._peers.clear()  # what it did is unknown: the next pass dumps again
                outcome.errors[""] = f"{e}" + (f": {e.__cause__}" if e.__cause__ else "")
        return outcome

    def _note_bridges(self, desired: DesiredState, outcome: Outcome) -> None:
        """Which networks' bridges are as wanted after this pass: observed so, or made by it."""
        made = {a.network.name for a in outcome.actions if isinstance(a, p.EnsureBridge)} \
            if "" not in outcome.errors else set()
        self._bridges = {
            name: net for name, net in desired.networks.items()
            if net.driver in p.LOCAL_BRIDGE_DRIVERS and (name in made or not p.bridge_needs_repair(
                net, outcome.observed.links.get(bridge_name(name))))}

    def attach_now(self, desired: DesiredState, ctr: DesiredContainer,
                   prepared: PreparedVeth | None = None) -> bool:
        """Build the CNI attachment ``ctr`` of ``desired`` now, as a pass would (see the module
        note), from its ``prepared`` pair when there is one. False, having done nothing, when
        a pass is needed (a prepared pair is left for it: ``ensure_veth`` adopts it); raises,
        having removed the veth, when a step fails."""
        net = desired.networks.get(ctr.target)
        realised = self._bridges.get(ctr.target)
        if (net is None or realised is None or not desired.synced or not ctr.ip
                or not ctr.cni_netns or ctr.cni_docker or desired.policy.policies
                or ctr.ingress_bps or ctr.egress_bps or ctr.burst_bytes
                or _bridge_side(net) != _bridge_side(realised)
                or (ctr.gateway, ctr.prefixlen, ctr.gateway6) !=
                (net.gateway, net.prefixlen, net.gateway6)):
            return False
        # The guard is written by a helper thread while this one makes the veth (libnftables and
        # netlink both let go of the GIL); the runtime starts no process before both are done.
        guarded = self._helper.submit(self.firewall.apply,
                                      p.firewall_spec(desired, self.firewall.bridged_tracked))
        veth = veth_name(ctr.name, ctr.interface)
        alias, mac = veth_alias(ctr.name, ctr.interface), container_mac(ctr.ip)
        try:
            if prepared is not None and prepared.host_ifname == veth:
                self.links.finish_veth(prepared, alias, ctr.cni_netns, ctr.interface,
                                       ctr.address_cidr, ctr.gateway, mac, ctr.address6_cidr,
                                       ctr.gateway6)
            else:
                self.links.add_veth(veth, alias, bridge_name(net.name), net.mtu, ctr.cni_netns,
                                    ctr.interface, ctr.address_cidr, ctr.gateway, mac,
                                    ctr.address6_cidr, ctr.gateway6)
        except BaseException:
            with contextlib.suppress(Exception):
                self.links.remove_link(veth)
            with contextlib.suppress(Exception):
                guarded.result()
            self._unguard(desired, ctr)
            raise
        try:
            guarded.result()
        except BaseException:
            self.links.remove_link(veth)
            self._unguard(desired, ctr)
            raise
        return True

    def _unguard(self, desired: DesiredState, ctr: DesiredContainer) -> None:
        """The firewall without ``ctr``'s guard again (a fast path that failed)."""
        without = dataclasses.replace(desired, containers={
            n: c for n, c in desired.containers.items() if n != ctr.name})
        try:
            self.firewall.apply(p.firewall_spec(without, self.firewall.bridged_tracked))
        except Exception as e:  # the next pass writes it
            log.warning("could not take the guard of %s away: %s", ctr.name, e)

    def sync_policies(self, desired: DesiredState, full: bool = False) -> str | None:
        """Make the policy table what ``desired.policy`` says (issue 22; agent/netpolicy.py):
        within a pass, and alone when a Watch event changed nothing but the policy input
        (``desired.Changed.POLICY``: nothing else to observe or plan). A full pass lists the
        table first, so drift is repaired. The error, when it could not be applied."""
        if self.policy_fw is None or not desired.synced:
            return None
        try:
            if full:
                self.policy_fw.observe()
            self.policy_fw.apply(build_policy_tables(desired.policy))
        except Exception as e:
            log.warning("network policy failed: %s", e, exc_info=True)
            return f"network policy: {e}" + (f": {e.__cause__}" if e.__cause__ else "")
        return None

    def _sync_shaping(self, desired: DesiredState, full: bool, outcome: Outcome) -> None:
        """Bandwidth limits on the veths of bridged containers (issue 22), set, changed and
        removed in place (agent/kernel/shaping.py), after the pass made the veths."""
        if self.shaper is None or not desired.synced:
            return
        wanted = {veth_name(c.name, c.interface): Shape(c.ingress_bps // 8 * 8,
                                                        c.egress_bps // 8 * 8, c.burst_bytes)
                  for c in desired.containers.values() if c.mode == "bridge"}
        try:
            errors = self.shaper.apply(wanted, full)
        except Exception as e:
            log.warning("bandwidth limits failed: %s", e, exc_info=True)
            errors = {"": f"{e}"}
        by_veth = {veth_name(c.name, c.interface): c.name for c in desired.containers.values()}
        for veth, message in errors.items():
            outcome.errors[by_veth.get(veth, "")] = message

    def apply(self, action: Grouped) -> None:
        match action:
            case p.EnableForwarding(ipv6):
                self.sysctls.ensure_sysctl("net.ipv4.ip_forward", "1")
                if ipv6:  # the host's namespace routes its networks' IPv6 too (issue 20)
                    self.sysctls.ensure_sysctl("net.ipv6.conf.all.forwarding", "1")
            case p.SyncFirewall(spec):
                if spec.networks:
                    self.firewall.apply(spec)
                else:
                    self.firewall.remove()
            case p.EnsureBridge(net):
                self.links.ensure_bridge(bridge_name(net.name), bridge_alias(net.name),
                                         net.gateway_cidr, net.mtu, net.gateway6_cidr)
            case p.RemoveLink(ifname):
                self.links.remove_link(ifname)
            case p.SetupContainer():
                self.containers.setup(action)
            case p.RemoveContainer(name, stop, addresses):
                self.containers.remove(name, stop, addresses)
            case p.EnsureVxlan(net):
                local = self.local
                self.links.ensure_vxlan(vxlan_name(net.name), vxlan_alias(net.name), net.vni,
                                        local.underlay_ip, net.vxlan_port, local.underlay_dev,
                                        net.mtu, local.vtep_mac, net.vtep_cidr, net.vtep6_cidr)
                # Made or mended: assume it holds no entries (its peers are all set next, with
                # no dump each); index -1 makes the next pass dump it.
                self._peers[vxlan_name(net.name)] = (-1, ObservedPeers())
            case p.SetPeer(device, peer):
                self.apply(SetPeers(device, (peer,)))
            case SetPeers(device, peers):
                cached = self._peers.get(device)
                self.links.ensure_peers(
                    device, [peer.entries() for peer in peers],
                    have=cached[1] if cached else None)
                self._wrote_peers(device, lambda h: functools.reduce(peers_after_set, peers, h))
            case p.RemovePeerRoute() | p.RemoveNeighbour() | p.RemoveFdb():
                for batch in group_peers([action]):
                    self.apply(batch)
            case RemovePeers(device, routes, neighbours, fdb):
                self.links.remove_peers(device, routes, neighbours, fdb)
                self._wrote_peers(device, lambda h: ObservedPeers(
                    routes=tuple(r for r in h.routes if r[0] not in routes),
                    neighbours=tuple(n for n in h.neighbours if n[0] not in neighbours),
                    fdb=tuple(f for f in h.fdb if f not in fdb)))

    def _wrote_peers(self, device: str, change: Callable[[ObservedPeers], ObservedPeers]) -> None:
        if device in self._peers:
            index, have = self._peers[device]
            self._peers[device] = (index, change(have))

    def statuses(self, desired: DesiredState, outcome: Outcome) -> list[ContainerStatus]:
        """The reports of ``desired``'s containers after ``outcome`` (agent.containers)."""
        return self.containers.statuses(desired, outcome.observed, outcome.errors)


def _bridge_side(net: DesiredNetwork) -> tuple[object, ...]:
    """What a network's bridge and its veths are made of (not its peers nor its names)."""
    return (net.driver, net.subnet, net.gateway, net.prefixlen, net.mtu, net.subnet6,
            net.gateway6)


def peers_after_set(have: ObservedPeers, peer: DesiredPeer) -> ObservedPeers:
    """What a VXLAN device holds after ``Links.ensure_peers`` for ``peer`` (pure): its routes,
    neighbours and FDB entry replace those with the same key (destination, address, MAC)."""
    entry = peer.entries()
    dsts, ips = {d for d, _ in entry.routes()}, {ip for ip, _ in entry.neighbours()}
    return ObservedPeers(
        routes=tuple(sorted({r for r in have.routes if r[0] not in dsts} | set(entry.routes()))),
        neighbours=tuple(sorted({n for n in have.neighbours if n[0] not in ips}
                                | set(entry.neighbours()))),
        fdb=tuple(sorted({f for f in have.fdb if f[0] != peer.vtep_mac}
                         | {(peer.vtep_mac, peer.underlay_ip)})))


