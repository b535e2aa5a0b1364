"""The Watch stream: one host's desired state as a snapshot, then revisioned deltas.

List, then watch (flannel's lease watcher): read a snapshot at revision R, then follow the store's
change log from R. Each change is mapped to what it means for this host: a container of this
host put or deleted, a lease of this host put or deleted, a network this host has a lease of
changed. A client that resumes from a revision the change log no longer holds gets a snapshot.
An empty event carries the current revision (a progress notice): after desired-state writes that
do not concern this host, and when nothing happens for a while (so the agent knows the stream is
alive). Fan-out: a change reaches as content only the hosts it concerns (a container goes to its
host, a lease's move to the network's other members); to the others it is only a progress
notice, and those are coalesced: one notice :data:`QUIET_PROGRESS` seconds after the first write
it covers, carrying the revision reached by then. So a container created on host A wakes A's agent
at once and B's agent at most once a second however many writes there are (each notice makes an
agent report its revision: without coalescing, N hosts x M writes reports).

What the agent can rely on: every network it holds a lease of comes with its full spec, and a
change of one (UpdateNetwork: masquerade, internal, allow) reaches every host holding a lease of
it. That is all routing between bridges needs: ``allow`` is symmetric (a pair may talk when
either lists the other), and a pair matters to a host only when it has both networks, whose
specs it then has. A container changed by UpdateContainer arrives as a put with its new spec
and address (none in modes other than bridge); a joined container's donor is always one of the
same host's containers.

Overlay peers. The HostNetwork of an overlay network carries its peers: every other host that
holds a lease of it (and has registered an underlay address and a VTEP MAC). So a peer set
changes when a lease of the network appears, disappears or moves to another subnet, and when a
member host's underlay address or VTEP MAC changes (re-registration). Each such change puts the
network, with its new peer list, to every OTHER host holding a lease of it; the owner of a changed
lease gets its own put (or delete) as before. A renewal (only the lease's times change) and an
allocation (which rewrites its lease unchanged) concern no peer. A host without a lease of the
network (no container on it) hears nothing of it.

DNS names (issues 19, 21). The HostNetwork carries the network's name table: every container of
it holding an address, on any host, with its aliases. That full table goes out only with the
network itself: in a snapshot (so on resume past compaction too) and when the network is put for
its own reasons (a lease of this host, a spec change, an overlay's peers). A container put or
deleted anywhere sends only a :class:`NameDelta` to every host holding a lease of its network(s):
the changed containers' names, and their entries as they are now (none once deleted or moved
away), which the agent swaps into its table. So one create at 100 hosts x 10 containers sends
one entry to each host, not 1,000: bytes per change no longer grow with the network's size. An
entry read "now" is idempotent: whichever of several deltas arrives last, it is the truth.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator

from sdnctl.api import convert, faults
from sdnctl.api.model import Container, Host, Lease, from_json, spans_hosts
from sdnctl.controller import ipam, keys, policies
from sdnctl.controller.errors import NotFound
from sdnctl.controller.keys import CONTAINERS, HOSTS, NETWORKS, STATUS
from sdnctl.controller.state import ContainerView, DnsName, HostNetwork, Snapshot, State
from sdnctl.controller.store.base import Change, Compacted
from sdnctl.v1 import sdnctl_pb2 as pb


def container_pb(view: ContainerView) -> pb.Container:
    msg = convert.container_to_pb(view.container)
    msg.status.CopyFrom(convert.status_to_pb(view.status))
    msg.revision = view.revision
    if view.allocation is not None:
        msg.ip = view.allocation.address
        msg.prefixlen = view.allocation.prefixlen
        msg.ip6 = view.allocation.address6
        msg.prefixlen6 = view.allocation.prefixlen6
    if view.lease is not None:
        msg.gateway = view.lease.gateway
        if view.allocation is not None and view.allocation.address6:
            msg.gateway6 = view.lease.gateway6
    return msg


def host_network_pb(view: HostNetwork) -> pb.HostNetwork:
    return pb.HostNetwork(
        network=convert.network_to_pb(view.network), lease=convert.lease_to_pb(view.lease),
        peers=[pb.Peer(host=p.host, subnet=p.subnet, underlay_ip=p.underlay_ip,
                       vtep_mac=p.vtep_mac, vtep_ip=p.vtep_ip, subnet6=p.subnet6,
                       vtep_ip6=p.vtep_ip6) for p in view.peers],
        names=[dns_name_pb(n) for n in view.names])


def dns_name_pb(name: DnsName) -> pb.DnsName:
    return pb.DnsName(container=name.container, aliases=list(name.aliases),
                      address=name.address, dns=list(name.dns), address6=name.address6)


def snapshot_event(snap: Snapshot, pset: pb.PolicySet | None = None) -> pb.WatchEvent:
    return pb.WatchEvent(
        revision=snap.revision,
        snapshot=True,
        networks=[host_network_pb(view) for view in snap.networks.values()],
        containers=[container_pb(v) for v in snap.containers.values()],
        policy_set=pset,
    )


def policy_set_pb(pset: policies.PolicySet) -> pb.PolicySet:
    return pb.PolicySet(policies=[convert.policy_to_pb(p) for p in pset.policies],
                        endpoints=[convert.endpoint_to_pb(e) for e in pset.endpoints],
                        network_cidrs=dict(pset.network_cidrs))


#: False: a container change re-sends its network with the full name table, as before issue 21
#: (for ``bench/watch_names.py``'s comparison only).
NAME_DELTAS = True


def delta_event(state: State, host: str, changes: Iterable[Change]) -> pb.WatchEvent:
    """What ``changes`` mean for ``host``; puts carry the objects as they are now."""
    put_containers: set[str] = set()
    gone_containers: set[str] = set()
    put_networks: set[str] = set()
    gone_networks: set[str] = set()
    peer_networks: set[str] = set()  # overlay networks whose peer set may have changed
    renamed: dict[str, set[str]] = {}  # network -> containers whose names may have changed
    for change in changes:
        key = change.key
        if key.startswith(CONTAINERS):
            name = key[len(CONTAINERS):]
            new = from_json(Container, change.value) if change.value else None
            old = from_json(Container, change.prev_value) if change.prev_value else None
            for ctr in (new, old):
                if ctr is not None and ctr.bridge_network is not None:
                    renamed.setdefault(ctr.bridge_network, set()).add(name)
            if new is not None and new.host == host:
                put_containers.add(name)
                gone_containers.discard(name)
            elif change.prev_value and _container_host(change.prev_value) == host:
                gone_containers.add(name)
                put_containers.discard(name)
        elif key.startswith(keys.LEASES):
            if change.value == change.prev_value:
                continue  # rewritten unchanged by an allocation
            lease = _lease(change.value or change.prev_value or b"{}")
            if lease.host != host:
                if _peer_moved(change):
                    peer_networks.add(lease.network)
            elif change.value is not None:
                put_networks.add(lease.network)
                gone_networks.discard(lease.network)
            else:
                gone_networks.add(lease.network)
                put_networks.discard(lease.network)
        elif key.startswith(NETWORKS) and change.value is not None:
            name = key[len(NETWORKS):]
            if ipam.get_lease(state.store, name, host) is not None:
                put_networks.add(name)
        elif key.startswith(HOSTS) and key[len(HOSTS):] != host and _vtep_moved(change):
            peer_networks.update(lease.network for lease in
                                 ipam.list_leases(state.store, host=key[len(HOSTS):]))

    event = pb.WatchEvent(deleted_networks=sorted(gone_networks),
                          deleted_containers=sorted(gone_containers))
    whole = set() if NAME_DELTAS else set(renamed)  # before issue 21: sent with the full table
    sent: set[str] = set()  # networks sent whole: their tables are current
    for name in sorted(put_networks | ((peer_networks | whole) - gone_networks)):
        view = state.host_network(name, host)
        if view is None:
            continue  # no lease here (nothing to say) or deleted since: a later change says so
        if name in put_networks or name in whole or spans_hosts(view.network.driver):
            event.networks.append(host_network_pb(view))
            sent.add(name)
    for name, containers in sorted(renamed.items()):
        if name in sent or name in gone_networks or ipam.get_lease(state.store, name, host) is None:
            continue
        event.name_deltas.append(pb.NameDelta(
            network=name, containers=sorted(containers),
            names=[dns_name_pb(n) for n in state.names_of(name, containers)]))
    for name in sorted(put_containers):
        try:
            event.containers.append(container_pb(state.get_container(name)))
        except NotFound:
            pass  # deleted since: a later change says so
    return event


# Every Watch stream reads the same changes: each record is decoded once for all of them.
@functools.lru_cache(maxsize=8192)
def _container_host(value: bytes) -> str:
    return from_json(Container, value).host


@functools.lru_cache(maxsize=8192)
def _lease(value: bytes) -> Lease:
    return from_json(Lease, value)


def _peer_moved(change: Change) -> bool:
    """A lease change that changes its host's place among the peers (not a renewal)."""
    if change.value is None or change.prev_value is None:
        return True
    return _lease(change.value).subnet != _lease(change.prev_value).subnet


def _vtep_moved(change: Change) -> bool:
    """A host record change that moves its VXLAN endpoint: underlay address or VTEP MAC."""
    def endpoint(value: bytes | None) -> tuple[str, str] | None:
        if value is None:
            return None
        h = from_json(Host, value)
        return h.underlay_ip, h.vtep_mac

    return endpoint(change.value) != endpoint(change.prev_value)


#: Progress notices for writes that do not concern a host: at most one per this many seconds.
QUIET_PROGRESS = 1.0


def host_events(state: State, host: str, since_revision: int, alive: Callable[[], bool],
                progress_interval: float = 10.0, poll: float = 0.5,
                quiet_progress: float | None = None) -> Iterator[pb.WatchEvent]:
    store = state.store
    revision = 0
    if since_revision > 0:
        try:
            store.changes_since(since_revision)
            revision = since_revision
        except Compacted:
            revision = 0
        # A revision this store never reached comes from another history (the controller
        # restarted on a memory store or a new database): deltas from there would silently
        # skip everything written up to it, so start over with a snapshot.
        if since_revision > store.revision():
            revision = 0
    sent_policies = b""  # the policy set last sent, serialized: send only a different one

    def policy_update(force: bool) -> pb.PolicySet | None:
        nonlocal sent_policies
        msg = policy_set_pb(policies.policy_set(store))
        wire = msg.SerializeToString(deterministic=True)
        if wire == sent_policies and not force:
            return None
        sent_policies = wire
        return msg

    if revision == 0:
        snap = state.snapshot(host)
        revision = snap.revision
        yield snapshot_event(snap, policy_update(True))
    # Resuming: the changes since the agent's revision send the set again if it changed.
    quiet = QUIET_PROGRESS if quiet_progress is None else quiet_progress
    last_sent = time.monotonic()
    pending = 0.0  # since when writes that do not concern this host wait to be told (0: none)
    while alive():
        faults.point("watch")
        if pending and time.monotonic() - pending >= quiet:
            last_sent, pending = time.monotonic(), 0.0
            yield pb.WatchEvent(revision=revision)
        wait = min(poll, max(0.0, pending + quiet - time.monotonic())) if pending else poll
        if store.wait(revision, timeout=wait) <= revision:
            if not pending and time.monotonic() - last_sent >= progress_interval:
                last_sent = time.monotonic()
                yield pb.WatchEvent(revision=revision)
            continue
        try:
            changes = store.changes_since(revision)
        except Compacted:
            snap = state.snapshot(host)
            revision = snap.revision
            last_sent = time.monotonic()
            yield snapshot_event(snap, policy_update(True))
            continue
        if not changes:
            continue
        revision = changes[-1].revision
        event = delta_event(state, host, changes)
        if any(policies.is_policy_change(c.key) for c in changes):
            update = policy_update(False)
            if update is not None:
                event.policy_set.CopyFrom(update)
        # Desired-state writes that do not concern this host still move its revision on (a
        # progress notice), so "has every agent realised revision R?" has an answer. Status
        # writes do not: agents' reports must not make other agents report in turn.
        if event.networks or event.containers or event.deleted_networks or \
                event.deleted_containers or event.name_deltas or event.HasField("policy_set"):
            event.revision = revision
            last_sent, pending = time.monotonic(), 0.0  # the event carries the revision
            yield event
        elif not pending and any(not c.key.startswith(STATUS) for c in changes):
            pending = time.monotonic()
