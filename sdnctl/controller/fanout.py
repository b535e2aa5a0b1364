"""Watch fan-out: one reader of the store's change log hands each change to the hosts it concerns.

Design note (issue 21). Every Watch stream used to follow the change log itself: N streams woke
on every write, each decoded every change and most found nothing for their host (then sent a
progress notice, which made the agent report). Now one :class:`Hub` per controller reads each
batch of changes once, works out which hosts it concerns (:func:`concerned`) and queues the
batch on those hosts' subscriptions only; the stream of each concerned host then builds that
host's delta (``watch.delta_event``) once. A host the batch does not concern is not woken.

Who is concerned, mirroring what ``watch.delta_event`` can send:

- a container put or deleted: its host (before and after), and, for its name in the DNS table
  (a :class:`NameDelta`), every host holding a lease of its bridge network;
- a lease put or deleted (not rewritten unchanged): its host, and when its place among the
  peers changed (created, deleted, moved to another subnet) on an overlay network, every host
  holding a lease of that network (their peer lists);
- a network put: every host holding a lease of it;
- a host record whose VXLAN endpoint moved: the holders of its overlay networks' leases;
- a change of the policy set (a policy, or a container or network a selector matches): every
  host (the set is global). The hub computes the set once per batch that may change it and
  compares it with the last one;
- anything else (reports, IPAM guards and history, images): nobody.

An over-approximation costs one empty event (a progress notice) to a host; missing a host would
lose a change, so the rules above err on the wide side.

"Has host H realised revision R?" (``sdnctl up``, ``run``, ``rm`` ask it through GetHost) used
to be answered by the progress notices every host received. Now the hub remembers, per host, the
revision of the last batch that concerned it (``last_content``) and the revision it has read up
to: an agent that reported at least its ``last_content`` (and at least the revision the hub
started at, since it knows nothing older) has realised everything up to the hub's revision,
since nothing in between concerned it (:meth:`Hub.realised`). Streams still send a progress
notice every ``progress_interval`` seconds of silence (the agent knows the stream is alive).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

from sdnctl.api.model import Container, Host, Lease, Network, from_json, spans_hosts
from sdnctl.controller import keys, policies
from sdnctl.controller.keys import CONTAINERS, HOSTS, NETWORKS, network_key
from sdnctl.controller.state import State
from sdnctl.controller.store.base import Change, Compacted, Store

log = logging.getLogger(__name__)

#: How long the hub waits for the store before checking whether it should stop.
POLL = 0.5
#: Back-off after a failed read of the change log: from RETRY_FIRST doubling up to RETRY_MAX.
RETRY_FIRST = 0.01
RETRY_MAX = 1.0


@dataclass
class Subscription:
    """One Watch stream's queue: batches of changes that concern its host."""

    host: str
    cond: threading.Condition = field(default_factory=threading.Condition)
    changes: list[Change] = field(default_factory=list)
    resync: bool = False  # the hub lost history: the stream must send a snapshot
    #: The stream's progress: the revision of the last event it sent that its agent reports
    #: (a keepalive notice is not one), the revision up to which it looked at every queued
    #: change (finding nothing to send is not sending), and the last batch found empty.
    sent: int = 0
    checked: int = 0
    skipped: int = 0
    woken: int = 0  # how many batches were queued (for tests and benchmarks)
    taken: int = 0  # how many times the stream looked (for tests)

    def take(self, timeout: float) -> tuple[list[Change], bool]:
        """The changes queued since the last take (waiting up to ``timeout`` for some), and
        whether a snapshot is due."""
        with self.cond:
            self.taken += 1
            if not self.changes and not self.resync:
                self.cond.wait(timeout)
            changes, self.changes = self.changes, []
            resync, self.resync = self.resync, False
        return changes, resync

    def wake(self) -> None:
        """End a ``take`` that waits, with nothing (the stream looks whether it goes on)."""
        with self.cond:
            self.cond.notify_all()

    def push(self, changes: list[Change] | None) -> None:
        with self.cond:
            if changes is None:
                self.resync = True
                self.changes = []
            else:
                self.changes.extend(changes)
            self.woken += 1
            self.cond.notify_all()


class Hub:
    """Reads the change log once for every Watch stream of one controller (see module doc)."""

    def __init__(self, state: State) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._subs: dict[int, Subscription] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None  # None: not reading (under _lock)
        self._keep = False
        self.revision = 0  # read and dispatched up to here
        self.started_at = 0  # the revision the hub started from (knows nothing older)
        self.last_content: dict[str, int] = {}
        self.last_everyone = 0  # the last batch that concerned every host
        self.batches = 0
        self._holders: dict[str, set[str]] = {}  # network -> hosts with a lease, as read
        self._policies: tuple[object, ...] = ()  # the policy set last seen, without revision

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, keep: bool = True) -> None:
        """Read the change log from now on. ``keep``: until :meth:`stop` (a server's hub);
        else only while some stream is subscribed (a hub a test's stream started)."""
        with self._lock:
            self._keep = self._keep or keep
            if self._thread is not None:
                return
            self._stop.clear()
            self._holders, self.revision = lease_holders(self.state.store)
            self.started_at = self.revision
            self._policies = _policy_key(policies.policy_set(self.state.store))
            self.last_content.clear()
            self.last_everyone = 0
            self._thread = threading.Thread(target=self._run, name="watch-hub", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            thread, self._keep = self._thread, False
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stop.is_set()

    # -- subscriptions ----------------------------------------------------------------------

    def subscribe(self, host: str) -> Subscription:
        """A queue for ``host``'s stream. It gets every batch the hub reads after this call
        that concerns ``host``; the caller reads what came before (snapshot or resume) itself
        AFTER subscribing, and skips queued changes it has already seen."""
        sub = Subscription(host)
        with self._lock:  # before the reader starts: a reader without subscribers ends
            self._subs[id(sub)] = sub
        self.start(keep=False)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.pop(id(sub), None)

    def realised(self, host: str, reported: int) -> int:
        """The revision ``host``'s agent has realised, given the one it ``reported``: the hub's
        revision when nothing the hub read since the report concerns the host, or when the
        host's stream looked at all that did and found nothing more to send than the agent
        has realised."""
        with self._lock:
            if self._thread is None or self._stop.is_set():
                return reported
            needed = max(self.started_at, self.last_everyone, self.last_content.get(host, 0))
            if reported >= needed:
                return max(reported, self.revision)
            subs = [s for s in self._subs.values() if s.host == host]
            if subs and subs[-1].checked >= needed and reported >= subs[-1].sent:
                return max(reported, self.revision)
            return reported

    def settled(self) -> bool:
        """Whether the hub has read the whole change log and every stream has looked at every
        batch that concerns its host (for benchmarks and tests: the fan-out is over)."""
        with self._lock:
            if self.revision < self.state.store.revision():
                return False
            return all(sub.checked >= max(self.last_everyone, self.started_at,
                                          self.last_content.get(sub.host, 0))
                       and not sub.changes for sub in self._subs.values())

    # -- the reader -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._read()
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _read(self) -> None:
        store = self.state.store
        failures = 0
        while not self._stop.is_set():
            with self._lock:
                if not self._keep and not self._subs:
                    # Given up under the same hold of the lock that found no subscriber: a
                    # subscriber that comes after finds no reader and starts one.
                    self._thread = None
                    return
            try:
                try:
                    current = store.wait(self.revision, timeout=POLL)
                    if current <= self.revision:
                        continue
                    changes = store.changes_since(self.revision)
                except Compacted:
                    self._resync()
                    continue
                if changes:
                    self.dispatch(changes)
                else:  # a revision without changes (etcd's own): nothing to wait for again
                    with self._lock:
                        self.revision = max(self.revision, current)
                failures = 0
            except Exception as e:
                # A busy or briefly unreachable store: read the same revisions again (nothing
                # is lost, the hub's revision did not move; a batch queued twice is skipped
                # by the streams, which filter by revision). Ending here instead left every
                # stream of this controller waiting for batches nobody would read (an agent
                # then never heard of a container). The server's stop() ends the hub.
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    log.warning("watch hub: reading the change log failed (%d in a row), "
                                "retrying: %s", failures, e)
                self._stop.wait(min(RETRY_MAX, RETRY_FIRST * 2 ** min(failures, 8)))

    def _resync(self) -> None:
        holders, revision = lease_holders(self.state.store)
        with self._lock:
            self._holders = holders
            for sub in self._subs.values():
                sub.push(None)
            self.revision = self.last_everyone = revision

    def dispatch(self, changes: list[Change]) -> None:
        """Queue ``changes`` (one read of the log, oldest first) on the streams they concern."""
        since, revision = self.revision, changes[-1].revision
        for c in changes:  # gone (here or on another replica): the shared views forget it
            if c.value is None and c.key.startswith(NETWORKS):
                self.state.forget_views(network=c.key[len(NETWORKS):])
            elif c.value is None and c.key.startswith(HOSTS):
                self.state.forget_views(host=c.key[len(HOSTS):])
        hosts = concerned(self.state, changes, self._holders)
        everyone = False
        relevant = [c.revision for c in changes if policies.is_policy_change(c.key)]
        if relevant:  # the set as it is now, so changed at the latest by the last of them
            now = _policy_key(policies.policy_set_after(self.state.store, since, changes))
            everyone = now != self._policies
            self._policies = now
        with self._lock:
            self.batches += 1
            if everyone:
                self.last_everyone = relevant[-1]
            self.last_content.update(hosts)
            # Queued before the revision moves on, under the lock: a stream that read
            # ``revision`` finds every batch up to it that concerns it in its queue.
            for sub in self._subs.values():
                if everyone or sub.host in hosts:
                    sub.push(changes)
            self.revision = revision


def lease_holders(store: Store) -> tuple[dict[str, set[str]], int]:
    """Which hosts hold a lease of each network, and the revision that was read at."""
    kvs, revision = store.range(keys.LEASES)
    holders: dict[str, set[str]] = {}
    for kv in kvs:
        lease = from_json(Lease, kv.value)
        holders.setdefault(lease.network, set()).add(lease.host)
    return holders, revision


def concerned(state: State, changes: Iterable[Change],
              holders: dict[str, set[str]]) -> dict[str, int]:
    """The hosts ``changes`` may concern (see module doc; the policy set apart), each with the
    revision of the last change that concerns it. ``holders``
    (:func:`lease_holders` as of the revision before ``changes``) is brought up to date with
    the leases they put and delete, change by change, so that who holds a lease is read as of
    each change, never from a store that has moved on."""
    store = state.store
    found: dict[str, int] = {}

    def overlay(network: str) -> bool:
        kv = store.get(network_key(network))  # a driver never changes: now is as good as then
        return kv is None or spans_hosts(from_json(Network, kv.value).driver)

    for change in changes:
        key = change.key
        hosts: set[str] = set()
        if key.startswith(CONTAINERS):
            for value in (change.value, change.prev_value):
                if value is None:
                    continue
                ctr = from_json(Container, value)
                hosts.add(ctr.host)
                if ctr.bridge_network is not None:
                    hosts.update(holders.get(ctr.bridge_network, ()))
        elif key.startswith(keys.LEASES):
            if change.value == change.prev_value:
                continue
            old = from_json(Lease, change.prev_value) if change.prev_value else None
            new = from_json(Lease, change.value) if change.value else None
            lease = new or old
            assert lease is not None
            if renewal_only(old, new):
                continue  # nobody's business (issue 21: each woke its host's stream a minute)
            members = holders.setdefault(lease.network, set())
            hosts.add(lease.host)
            moved = place_changed(old, new)
            if moved and overlay(lease.network):
                hosts.update(members)  # the peers it leaves (or joins, below)
            if new is None:
                members.discard(lease.host)
            else:
                members.add(lease.host)
            if moved and overlay(lease.network):
                hosts.update(members)
        elif key.startswith(NETWORKS) and change.value is not None:
            hosts.update(holders.get(key[len(NETWORKS):], ()))
        elif key.startswith(HOSTS) and _endpoint(change.value) != _endpoint(change.prev_value):
            name = key[len(HOSTS):]  # its peers' lists change, not its own
            for members in holders.values():
                if name in members:
                    hosts.update(members - {name})
        for host in hosts:
            found[host] = change.revision
    return found


def renewal_only(old: Lease | None, new: Lease | None) -> bool:
    """A lease change that only renews it (its times): no agent uses those (``sdnctl ipam``
    reads them from the store), so it is sent to none."""
    return old is not None and new is not None and \
        dataclasses.replace(old, renewed_at=0, expires_at=0) == \
        dataclasses.replace(new, renewed_at=0, expires_at=0)


def place_changed(old: Lease | None, new: Lease | None) -> bool:
    """A lease change that changes its host's place among an overlay's peers: created,
    deleted, or another subnet in either family (a renewal is none)."""
    return old is None or new is None or (old.subnet, old.subnet6) != (new.subnet, new.subnet6)


def _policy_key(pset: policies.PolicySet) -> tuple[object, ...]:
    return pset.policies, pset.endpoints, pset.network_cidrs, pset.network_cidrs6


def _endpoint(value: bytes | None) -> tuple[str, str] | None:
    if value is None:
        return None
    host = from_json(Host, value)
    return host.underlay_ip, host.vtep_mac


_hubs: weakref.WeakKeyDictionary[State, Hub] = weakref.WeakKeyDictionary()
_hubs_lock = threading.Lock()


def hub_of(state: State) -> Hub:
    """The hub of ``state`` (one per controller), made on first use."""
    with _hubs_lock:
        hub = _hubs.get(state)
        if hub is None:
            hub = _hubs[state] = Hub(state)
        return hub
