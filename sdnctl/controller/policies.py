"""Network policies in the store (issue 22): create (or replace), get, list, delete, and the
policy set every agent enforces.

Design note. A policy is one key, ``/policies/<name>``, written with a compare on what was read.
The policy set an agent needs is global: every policy (networks' ``default_policy: deny``
included, as ``default/<network>`` policies) and every container address with its labels, on
any host, since a selector matches containers everywhere. It is computed from one range read of
the store, then moved on by the change log (the hub asks after every commit that touched a
container: a whole read each time made a create cost O(containers)), and cached by revision,
so the Watch streams of 100 hosts reading the same revision compute it once. The evaluation
itself is ``sdnctl.api.policyeval``'s.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sdnctl.api.model import (
    POLICY_ALL_NETWORKS,
    Allocation,
    Container,
    Network,
    Policy,
    from_json,
    policy_from_json,
    to_json,
)
from sdnctl.api.policyeval import (
    Endpoint,
    Evaluator,
    Selector,
    default_policies,
    policy_selector,
    selects,
)
from sdnctl.api.validate import validate_policy
from sdnctl.controller import ipam, keys
from sdnctl.controller.errors import Invalid, NotFound
from sdnctl.controller.store.base import Change, Compacted, Compare, Delete, Put, Store


@dataclass(frozen=True)
class PolicySet:
    """What every agent enforces, read at one revision."""

    revision: int
    policies: tuple[Policy, ...]
    endpoints: tuple[Endpoint, ...]
    network_cidrs: tuple[tuple[str, str], ...]
    network_cidrs6: tuple[tuple[str, str], ...] = ()  # dual-stack networks' IPv6 prefixes

    def evaluator(self) -> Evaluator:
        return Evaluator(self.policies, self.endpoints, dict(self.network_cidrs),
                         dict(self.network_cidrs6))


def create_policy(store: Store, policy: Policy) -> tuple[Policy, int]:
    """Create or replace ``policy``; its networks must exist."""
    validate_policy(policy)
    key = keys.policy_key(policy.name)

    def build() -> tuple[list[Compare], list[Put | Delete], None]:
        for field, name in _networks_named(policy):
            if store.get(keys.network_key(name)) is None:
                raise Invalid(field, f"network {name!r} does not exist")
        kv = store.get(key)
        return [Compare(key, kv.mod_revision if kv else 0)], [Put(key, to_json(policy))], None

    revision = ipam.commit_with_revision(store, build)[1]
    return policy, revision


def _networks_named(policy: Policy) -> list[tuple[str, str]]:
    named = [] if policy.network == POLICY_ALL_NETWORKS else [("policy.network", policy.network)]
    for direction in ("ingress", "egress"):
        for i, rule in enumerate(getattr(policy, direction) or ()):
            side = "from" if direction == "ingress" else "to"  # validate_policy's names
            named += [(f"policy.{direction}[{i}].{side}[{j}].network", p.network)
                      for j, p in enumerate(rule.peers) if p.network]
    return named


def get_policy(store: Store, name: str) -> tuple[Policy, int]:
    kv = store.get(keys.policy_key(name))
    if kv is None:
        raise NotFound("policy", name)
    return policy_from_json(kv.value), kv.mod_revision


def list_policies(store: Store) -> tuple[list[tuple[Policy, int]], int]:
    kvs, revision = store.range(keys.POLICIES)
    return [(policy_from_json(kv.value), kv.mod_revision) for kv in kvs], revision


def delete_policy(store: Store, name: str) -> int:
    key = keys.policy_key(name)

    def build() -> tuple[list[Compare], list[Put | Delete], None]:
        kv = store.get(key)
        if kv is None:
            raise NotFound("policy", name)
        return [Compare(key, kv.mod_revision)], [Delete(key)], None

    return ipam.commit_with_revision(store, build)[1]


T = TypeVar("T")
_lock = threading.Lock()
_cache: weakref.WeakKeyDictionary[Store, _Index] = weakref.WeakKeyDictionary()


@dataclass
class _Index:
    """The keys a policy set is made of, decoded, as of ``pset.revision``. Read whole once;
    then moved on by the store's change log: a container's creation costs the decode of its
    own keys, not of every key (the hub asks after every commit that touched a container)."""

    networks: dict[str, Network]
    policies: dict[str, Policy]
    containers: dict[str, Container]  # as of the last _decode (see undecoded)
    owners: dict[str, Allocation]  # IPAM owner key -> its allocation; the same
    pset: PolicySet
    rules: tuple[Policy, ...] = ()  # the policies, networks' default ones included
    selectors: tuple[Selector, ...] = ()  # what the rules select: none, no endpoint matters
    # Containers and address owners put since ``containers`` and ``owners`` were decoded
    # (None: deleted), by key: decoded only when a selector makes endpoints matter, so on a
    # store without policies the hub's question after each create decodes nothing.
    undecoded: dict[str, bytes | None] = dataclasses.field(default_factory=dict)

    def put(self, key: str, value: bytes | None) -> str:
        """Apply one key's new value (None: deleted); which part it changed: "rules" (a
        policy or a network), "endpoints" (a container or an address owner) or ""."""
        if key.startswith(keys.POLICIES):
            _set(self.policies, key[len(keys.POLICIES):], value, policy_from_json)
            return "rules"
        if key.startswith(keys.NETWORKS):
            _set(self.networks, key[len(keys.NETWORKS):], value,
                 lambda v: from_json(Network, v))
            return "rules"
        if key.startswith(keys.CONTAINERS) or (
                key.startswith(keys.IPAM) and key[len(keys.IPAM):].split("/")[1:2] == ["owner"]):
            self.undecoded[key] = value
            return "endpoints"
        return ""

    def _decode(self) -> None:
        """Bring ``containers`` and ``owners`` up to the keys put since they were decoded."""
        for key, value in self.undecoded.items():
            if key.startswith(keys.CONTAINERS):
                _set(self.containers, key[len(keys.CONTAINERS):], value,
                     lambda v: from_json(Container, v))
            else:
                _set(self.owners, key, value, lambda v: from_json(Allocation, v))
        self.undecoded.clear()

    def derive(self, revision: int, rules: bool, members: bool) -> None:
        """The policy set at ``revision``, from what changed since the last one."""
        if rules:
            networks = self.networks.values()
            self.rules = tuple(sorted([*self.policies.values(), *default_policies(networks)],
                                      key=lambda p: p.name))
            self.selectors = tuple(Evaluator(self.rules, (), {}).selectors())
        old = self.pset
        found = old.endpoints
        if rules or members:
            # Only endpoints some selector matches matter to agents: an unlabelled container
            # on a network without policies changes nothing they enforce, so its creation
            # sends nothing.
            if self.selectors:
                self._decode()
            found = () if not self.selectors else tuple(
                e for e in endpoints(self.containers, {
                    (a.network, a.container): a for _, a in sorted(self.owners.items())})
                if any(selects(s, e) for s in self.selectors))
            if found == old.endpoints:  # the same tuple: streams and conversions see it is
                found = old.endpoints
        cidrs, cidrs6 = old.network_cidrs, old.network_cidrs6
        if rules:
            cidrs = tuple(sorted((n.name, n.subnet) for n in self.networks.values()))
            cidrs6 = tuple(sorted((n.name, n.subnet6) for n in self.networks.values()
                                  if n.subnet6))
        self.pset = PolicySet(revision, self.rules, found, cidrs, cidrs6)


def _set(table: dict[str, T], name: str, value: bytes | None,
         decode: Callable[[bytes], T]) -> None:
    if value is None:
        table.pop(name, None)
    else:
        table[name] = decode(value)


def policy_set(store: Store, at_least: int = 0) -> PolicySet:
    """The whole policy set at the store's current revision (cached per revision, moved on by
    the change log since the cached one; read whole the first time and after a compaction).
    ``at_least``: any set as of that revision or later will do (a Watch stream's, for the
    changes it is sending: what came since is its next batch), so the N streams one change
    wakes neither ask the store its revision nor queue here to move the set on, each by the
    status reports written meanwhile."""
    index = _cache.get(store)
    if at_least and index is not None and index.pset.revision >= at_least:
        return index.pset
    revision = store.revision()
    with _lock:
        index = _cache.get(store)
        if index is not None and index.pset.revision >= max(revision, at_least):
            return index.pset
        try:
            if index is None:
                raise Compacted(0, 0)
            changes = store.changes_since(index.pset.revision)
        except Compacted:
            index = _cache[store] = _read_index(store)
            return index.pset
        parts = {index.put(c.key, c.value) for c in changes}
        index.derive(max([revision, *(c.revision for c in changes[-1:])]),
                     "rules" in parts, "endpoints" in parts)
        return index.pset


def policy_set_after(store: Store, since: int, changes: Sequence[Change]) -> PolicySet:
    """:func:`policy_set` as of the last of ``changes``, which are the store's whole change log
    after revision ``since``, as the caller (the watch hub) read it: a cached set at ``since``
    or later is moved on by those of them it lacks, without reading the log again. A cached
    set older than ``since`` (or none) is what :func:`policy_set` is for."""
    with _lock:
        index = _cache.get(store)
        if index is not None and index.pset.revision >= since:
            newer = [c for c in changes if c.revision > index.pset.revision]
            if newer:
                parts = {index.put(c.key, c.value) for c in newer}
                index.derive(newer[-1].revision, "rules" in parts, "endpoints" in parts)
            return index.pset
    return policy_set(store)


def _read_index(store: Store) -> _Index:
    kvs, read_at = store.range("/")
    index = _Index({}, {}, {}, {}, PolicySet(read_at, (), (), ()))
    for kv in kvs:
        index.put(kv.key, kv.value)
    index.derive(read_at, rules=True, members=True)
    return index


def endpoints(containers: dict[str, Container],
              allocations: dict[tuple[str, str], Allocation]) -> tuple[Endpoint, ...]:
    """Every container with an address: bridged ones at theirs (both, on a dual-stack
    network), joined ones at their donor's."""
    found = []
    for c in containers.values():
        donor = containers.get(c.donor) if c.donor else None
        owner = donor if donor is not None else c
        net = owner.bridge_network
        alloc = allocations.get((net, owner.name)) if net else None
        if net and alloc is not None:
            found.append(Endpoint(c.name, net, alloc.address, c.labels, alloc.address6))
    return tuple(sorted(found, key=lambda e: e.container))


def selected(pset: PolicySet, policy: Policy, containers: list[Container]) -> list[str]:
    """What ``policy`` selects, for ``policy inspect``: containers by name; open ones (the
    host's network) say they are the host's and never isolated."""
    selector = policy_selector(policy)
    names = [e.container for e in pset.endpoints if selects(selector, e)]
    names += [f"{c.name} (open: the host's network, not isolated)" for c in containers
              if c.mode == "host" and set(policy.select) <= set(c.labels)]
    return sorted(names)


def is_policy_change(key: str) -> bool:
    """Whether a change of ``key`` may change the policy set."""
    return key.startswith((keys.POLICIES, keys.CONTAINERS, keys.NETWORKS)) or (
        key.startswith(keys.IPAM) and "/owner/" in key)


__all__ = [
    "PolicySet",
    "create_policy",
    "delete_policy",
    "endpoints",
    "get_policy",
    "is_policy_change",
    "list_policies",
    "policy_set",
    "policy_set_after",
    "selected",
]
