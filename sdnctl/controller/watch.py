"""The Watch stream: one host's desired state as a snapshot, then revisioned deltas.

List, then watch (flannel's lease watcher): read a snapshot at revision R, then follow the store's
change log from R. Each change is mapped to what it means for this host: a container of this
host put or deleted, a lease of this host put or deleted, a network this host has a lease of
changed. A client that resumes from a revision the change log no longer holds gets a snapshot.
Fan-out (:mod:`sdnctl.controller.fanout`): one hub per controller reads the change log once and
queues each batch only on the streams of the hosts it concerns (a container goes to its host and
its name to its network's hosts, a lease's move to the network's other members); the stream then
builds its host's delta. A host a write does not concern is not woken at all: GetHost answers
"has it realised revision R?" from the hub's record of what concerned it. An empty event carries
the current revision (a progress notice): on resume, when a batch the hub sent turns out to
hold nothing for the host, and when nothing happens for ``progress_interval`` seconds (so the
agent knows the stream is alive). The periodic notice is marked ``keepalive`` when no batch was
found empty since the last event the stream sent (``Subscription.skipped``): the agent does not
report it, and ``Subscription.sent`` stays where it was, since the hub counts the revisions
that did not concern a host as realised already. When agents reported every notice, each
report was a store write that moved the revision, so the next notice to every other host moved
it again: 100 idle agents wrote ten status records a second, for ever. A notice after a batch
found empty is not marked: its report tells the other replicas (whose hubs cannot know the
batch was empty) that the host is up to date. The reports of every notice also renewed the
host's leases: the stream renews them at each keepalive instead, when due.

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

import collections
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from sdnctl.api import convert, faults, policyeval
from sdnctl.api.model import Container, Host, Lease, from_json, from_json_frozen, spans_hosts
from sdnctl.controller import fanout, ipam, keys, policies
from sdnctl.controller.errors import NotFound
from sdnctl.controller.keys import CONTAINERS, HOSTS, NETWORKS
from sdnctl.controller.state import (
    ContainerView,
    DnsName,
    HostNetwork,
    NameDelta,
    Peer,
    Snapshot,
    State,
)
from sdnctl.controller.store.base import Change, Compacted
from sdnctl.v1 import sdnctl_pb2 as pb

log = logging.getLogger(__name__)


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


def host_network_pb(view: HostNetwork, names: bool = True) -> pb.HostNetwork:
    """``view`` as sent; without ``names``, marked ``names_kept`` (the agent keeps its table)."""
    return pb.HostNetwork(
        network=convert.network_to_pb(view.network), lease=convert.lease_to_pb(view.lease),
        peers=[_peer_pb(p) for p in view.peers], names=_names_pb(view.names) if names else [],
        names_kept=not names)


# The N streams one write wakes send the same peers and name table (``State.host_network``
# shares them): each entry is converted once, not once per stream (issue 21: 100 peers and
# 100 names made every stream's event ~0.5 ms of conversions).
@functools.lru_cache(maxsize=8192)
def _peer_pb(p: Peer) -> pb.Peer:
    return pb.Peer(host=p.host, subnet=p.subnet, underlay_ip=p.underlay_ip, vtep_mac=p.vtep_mac,
                   vtep_ip=p.vtep_ip, subnet6=p.subnet6, vtep_ip6=p.vtep_ip6)


K = TypeVar("K")
V = TypeVar("V")


class _Shared(Generic[K, V]):
    """Conversions of the objects the N streams one write wakes share (the same name table of
    ``State.host_network``, the same ``policies.PolicySet``), by identity: each converted once,
    the last few kept (a kept object cannot be freed, so its identity is never reused). The
    result is shared: callers copy it into their event, never change it."""

    def __init__(self, convert: Callable[[K], V], keep: int = 8) -> None:
        self._convert = convert
        self._done: collections.deque[tuple[K, V]] = collections.deque(maxlen=keep)

    def __call__(self, shared: K) -> V:
        for known, done in list(self._done):  # (a copy: other streams convert too)
            if known is shared:
                return done
        done = self._convert(shared)
        self._done.append((shared, done))
        return done


_names_pb: _Shared[tuple[DnsName, ...], list[pb.DnsName]] = _Shared(
    lambda names: [dns_name_pb(n) for n in names])


#: A NameDelta goes to every host holding the network: converted once for all their streams.
_name_delta_pb: _Shared[NameDelta, pb.NameDelta] = _Shared(
    lambda d: pb.NameDelta(network=d.network, containers=sorted(d.containers),
                           names=[dns_name_pb(n) for n in d.names]))


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


def policy_set_pb(pset: policies.PolicySet, endpoints: bool = True) -> pb.PolicySet:
    """The set; without ``endpoints``, its policies alone (``endpoints_kept``)."""
    return pb.PolicySet(policies=[convert.policy_to_pb(p) for p in pset.policies],
                        endpoints=_endpoints_pb(pset.endpoints) if endpoints else [],
                        endpoints_kept=not endpoints,
                        network_cidrs=dict(pset.network_cidrs),
                        network_cidrs6=dict(pset.network_cidrs6))


#: A policy change sends the set to every host: 900 selected addresses were ~3.4 ms of
#: conversion per stream, 0.34 s of the controller's interpreter per change at 100 hosts. And
#: a policy created or deleted leaves the endpoints as they were (the same tuple): 1,000 of
#: them were 30-80 ms of conversion per change, once, before any stream could send it.
_endpoints_pb: _Shared[tuple[policyeval.Endpoint, ...], list[pb.PolicyEndpoint]] = _Shared(
    lambda endpoints: [convert.endpoint_to_pb(e) for e in endpoints])
_shared_policy_set_pb: _Shared[policies.PolicySet, pb.PolicySet] = _Shared(policy_set_pb)
_shared_policies_pb: _Shared[policies.PolicySet, pb.PolicySet] = _Shared(
    lambda pset: policy_set_pb(pset, endpoints=False))


#: False: a container change re-sends its network with the full name table, as before issue 21
#: (for ``bench/watch_names.py``'s comparison only).
NAME_DELTAS = True


def _renew(state: State, host: str) -> None:
    """The connected agent's leases, renewed when due (``State.renew_leases``); a store that
    fails now is asked again at the next keepalive (a lease lives an hour by default)."""
    try:
        state.renew_leases(host)
    except Exception as e:  # the stream must go on: its agent is connected
        log.warning("could not renew the leases of host %s: %s", host, e)


def delta_event(state: State, host: str, changes: Iterable[Change],
                keeps_names: bool = False) -> pb.WatchEvent:
    """What ``changes`` mean for ``host``; puts carry the objects as they are now (networks
    as of the last change or later: ``State.host_network``). ``keeps_names``: the agent
    understands ``names_kept``, so an overlay sent again for its peers alone goes without its
    name table (the agent holds it: it got the network whole first, and every change of the
    table since as a NameDelta or whole), and this event's NameDeltas bring the table's
    changes."""
    put_containers: set[str] = set()
    gone_containers: set[str] = set()
    put_networks: set[str] = set()
    gone_networks: set[str] = set()
    peer_networks: set[str] = set()  # overlay networks whose peer set may have changed
    renamed: dict[str, set[str]] = {}  # network -> containers whose names may have changed
    at_least = 0  # the views sent must be at least as new as the last change
    for change in changes:
        key = change.key
        at_least = max(at_least, change.revision)
        if key.startswith(CONTAINERS):
            name = key[len(CONTAINERS):]
            # (one decode for every stream: ~40 % of the controller's time in a 100x10 up)
            new = from_json_frozen(Container, change.value) if change.value else None
            old = from_json_frozen(Container, change.prev_value) if change.prev_value else None
            for ctr in (new, old):
                if ctr is not None and ctr.bridge_network is not None:
                    renamed.setdefault(ctr.bridge_network, set()).add(name)
            if new is not None and new.host == host:
                put_containers.add(name)
                gone_containers.discard(name)
            elif old is not None and old.host == host:
                gone_containers.add(name)
                put_containers.discard(name)
        elif key.startswith(keys.LEASES):
            if change.value == change.prev_value:
                continue  # rewritten unchanged by an allocation
            if change.value and change.prev_value and \
                    fanout.renewal_only(_lease(change.prev_value), _lease(change.value)):
                continue  # renewed: nothing an agent uses changed
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
            peer_networks.update(state.lease_networks(key[len(HOSTS):], at_least))

    event = pb.WatchEvent(deleted_networks=sorted(gone_networks),
                          deleted_containers=sorted(gone_containers))
    whole = set() if NAME_DELTAS else set(renamed)  # before issue 21: sent with the full table
    sent: set[str] = set()  # networks sent whole: their tables are current
    for name in sorted(put_networks | ((peer_networks | whole) - gone_networks)):
        view = state.host_network(name, host, at_least)
        if view is None:
            continue  # no lease here (nothing to say) or deleted since: a later change says so
        if name in put_networks or name in whole:
            event.networks.append(host_network_pb(view))
            sent.add(name)
        elif spans_hosts(view.network.driver):  # its peers alone
            event.networks.append(host_network_pb(view, names=not keeps_names))
            if not keeps_names:
                sent.add(name)
    for name, containers in sorted(renamed.items()):
        if name in sent or name in gone_networks:
            continue
        delta = state.name_delta(name, containers, at_least)
        if host in delta.holders:
            event.name_deltas.append(_name_delta_pb(delta))
    for name in sorted(put_containers):
        try:
            event.containers.append(container_pb(state.get_container(name)))
        except NotFound:
            pass  # deleted since: a later change says so
    return event


def _lease(value: bytes) -> Lease:
    return from_json_frozen(Lease, value)  # decoded once for every stream


def _peer_moved(change: Change) -> bool:
    """A lease change that changes its host's place among the peers (not a renewal)."""
    return fanout.place_changed(_lease(change.prev_value) if change.prev_value else None,
                                _lease(change.value) if change.value else None)


def _vtep_moved(change: Change) -> bool:
    """A host record change that moves its VXLAN endpoint: underlay address or VTEP MAC."""
    def endpoint(value: bytes | None) -> tuple[str, str] | None:
        if value is None:
            return None
        h = from_json(Host, value)
        return h.underlay_ip, h.vtep_mac

    return endpoint(change.value) != endpoint(change.prev_value)


def host_events(state: State, host: str, since_revision: int, alive: Callable[[], bool],
                progress_interval: float = 10.0, poll: float = 0.5,
                keeps_names: bool = False,
                keeps_endpoints: bool = False,
                wake_on: Callable[[Callable[[], None]], object] | None = None,
                ) -> Iterator[pb.WatchEvent]:
    """The events of ``host``'s stream while ``alive()``, which is asked every ``poll``
    seconds and whenever a batch comes. ``wake_on``: registers a function to call when
    ``alive()`` turns false (gRPC's ``context.add_callback``: the call ended); then the stream
    waits for batches until its next progress notice is due, not ``poll`` at a time (100
    idle streams woke 200 times a second: 12 ms of the controller's CPU a second)."""
    hub = fanout.hub_of(state)
    sub = hub.subscribe(host)  # before reading anything: no batch falls between the two
    if wake_on is not None:
        wake_on(sub.wake)
        poll = progress_interval
    try:
        yield from _host_events(state, hub, sub, since_revision, alive, progress_interval, poll,
                                keeps_names, keeps_endpoints)
    finally:
        hub.unsubscribe(sub)


def _host_events(state: State, hub: fanout.Hub, sub: fanout.Subscription, since_revision: int,
                 alive: Callable[[], bool], progress_interval: float,
                 poll: float, keeps_names: bool,
                 keeps_endpoints: bool) -> Iterator[pb.WatchEvent]:
    store, host = state.store, sub.host
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
    sent_policies: tuple[object, ...] = ()  # the policy set last sent: send only a different one

    def policy_update(force: bool, at_least: int = 0) -> pb.PolicySet | None:
        nonlocal sent_policies
        pset = policies.policy_set(store, at_least)
        # Compared as data, not as a message built and serialized by each of N streams.
        now = (pset.policies, pset.endpoints, pset.network_cidrs, pset.network_cidrs6)
        if now == sent_policies and not force:
            return None
        # The agent holds the endpoints this stream sent last: when they stand, the policies
        # go alone (a snapshot sends everything).
        kept = keeps_endpoints and not force and bool(sent_policies) and \
            sent_policies[1] == pset.endpoints
        sent_policies = now
        return (_shared_policies_pb if kept else _shared_policy_set_pb)(pset)

    def delta(changes: list[Change]) -> pb.WatchEvent | None:
        """The event for ``changes``, None when nothing in them is this host's after all."""
        event = delta_event(state, host, changes, keeps_names)
        if any(policies.is_policy_change(c.key) for c in changes):
            update = policy_update(False, changes[-1].revision)
            if update is not None:
                event.policy_set.CopyFrom(update)
        if not (event.networks or event.containers or event.deleted_networks or
                event.deleted_containers or event.name_deltas or event.HasField("policy_set")):
            return None
        event.revision = changes[-1].revision
        return event

    resync = revision == 0
    if not resync:  # resuming: what was written since the agent's revision, read once
        try:
            missed = store.changes_since(revision)
        except Compacted:
            missed, resync = [], True
        if missed:
            revision = missed[-1].revision
            # Even when none of it is this host's, the agent learns the revision it reached.
            sub.sent = sub.checked = revision
            yield delta(missed) or pb.WatchEvent(revision=revision)
    last_sent = time.monotonic()
    while alive():
        if resync:
            snap = state.snapshot(host)
            revision = snap.revision
            last_sent = time.monotonic()
            sub.sent = sub.checked = revision
            yield snapshot_event(snap, policy_update(True))
        faults.point("watch")
        reached = hub.revision  # every batch up to here that concerns us is queued already
        changes, resync = sub.take(timeout=max(
            0.0, min(poll, last_sent + progress_interval - time.monotonic())))
        if resync:
            continue
        changes = [c for c in changes if c.revision > revision]
        if changes:
            revision = changes[-1].revision
            event = delta(changes)
            if event is None:  # over-approximated by the hub: nothing to wake the agent for
                sub.checked = sub.skipped = revision
                continue
            last_sent = time.monotonic()
            sub.sent = sub.checked = revision
            yield event
        elif time.monotonic() - last_sent >= progress_interval:
            # Nothing for this host up to ``reached``: a progress notice, a keepalive unless a
            # batch was found empty since the last event sent (then the agent reports it).
            revision = max(revision, reached)
            last_sent = time.monotonic()
            quiet = sub.skipped <= sub.sent
            sub.checked = revision
            if not quiet:
                sub.sent = revision
            _renew(state, host)  # (the agent does not report a keepalive, which renewed them)
            yield pb.WatchEvent(revision=revision, keepalive=quiet)
