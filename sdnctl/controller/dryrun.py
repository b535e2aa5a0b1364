"""Server-side dry run of a whole topology: would `sdnctl up` of these objects succeed?

Design note. There is one set of rules, :class:`State`'s: the dry run does not re-state them. It
copies the store (one ``range`` of everything, so one revision) into a throwaway
:class:`MemoryStore` and applies the objects there through the very ``State`` methods the API
calls, in the order `sdnctl up` calls them (hosts, each registered by its agent if it is a lab
host; networks without ``allow``, then their ``allow``; the network policies, through
CreatePolicy's own function; donors before the containers joined to them, by name). An
object that exists is compared and updated as `up` does. The copy is dropped: the real store
is only read. So IPAM capacity, host-port clashes, a fixed address on the
gateway, a subnet holding a host's underlay address, a taken VNI... are found before anything is
built, with the same words the real call would use.

A refusal is one :class:`Invalid` whose field names the object by its place in the request and
then the field the real call named (``containers[2].ports[0]``), so that a caller holding the
request's source (a topology file) can point at the line. The first refusal ends the run: later
objects may depend on the one refused.

`sdnctl up` with no controller running runs the same function in its own process, on a copy of
what the controller it is about to start would hold (its SQLite file, if any, and the default
bridge network): :func:`validate_request` is the code of both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import time
from collections.abc import Callable, Iterator

from sdnctl.api import convert
from sdnctl.api.fields import check_count, image_name
from sdnctl.api.model import Container, Host, Invalid, Network, to_json
from sdnctl.api.validate import REPORT_MAX
from sdnctl.controller import images, ipam, keys, policies
from sdnctl.controller.errors import AlreadyExists, NotFound, SdnError
from sdnctl.controller.state import State
from sdnctl.controller.store.base import Put, Store
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.v1 import sdnctl_pb2 as pb

#: Network fields a topology may leave at 0 for the controller to choose (as `up` treats them).
CONTROLLER_CHOSEN = ("vni", "vxlan_port")
#: What the real calls name an object's fields after, per list of the request.
SINGULAR = {"hosts": "host", "networks": "network", "containers": "container",
            "policies": "policy"}
_LEADING_FIELD = re.compile(r"^(host|network|container|policy)((?:\.[A-Za-z_]+|\[\d+\])*): (.*)$",
                            re.DOTALL)


def validate_request(store: Store, request: pb.ValidateTopologyRequest,
                     timers: ipam.Timers = ipam.DEFAULT_TIMERS,
                     clock: Callable[[], float] = time.time,
                     default_bridge: str | None = None) -> int:
    """Apply the request's objects to a copy of ``store`` and drop the copy; :class:`Invalid`
    naming the first object refused. Returns the revision of ``store`` that was copied.

    ``default_bridge``: make sure the copy has the default bridge network on this subnet (a
    controller about to start makes it; a running one has it already)."""
    check_count(request.hosts, "hosts", REPORT_MAX)
    check_count(request.networks, "networks", REPORT_MAX)
    check_count(request.containers, "containers", REPORT_MAX)
    check_count(request.images, "images", REPORT_MAX)
    check_count(request.policies, "policies", REPORT_MAX)
    scratch, revision = scratch_copy(store)
    state = State(scratch, timers, clock)
    if default_bridge:
        state.ensure_default_bridge(default_bridge)
    for i, ref in enumerate(request.images):
        with placed("images", i):
            assume_image(scratch, ref)
    for i, host_msg in enumerate(request.hosts):
        with placed("hosts", i):
            host = convert.host_from_pb(host_msg)
            apply_host(state, Host(host.name, host.underlay_ip, host.lab))
    networks = []
    for i, network_msg in enumerate(request.networks):
        with placed("networks", i):
            network = convert.network_from_pb(network_msg)
            apply_network(state, dataclasses.replace(network, allow=()))
            networks.append((i, network))
    for i, network in networks:
        if network.allow:
            with placed("networks", i):
                apply_network(state, network)
    named: dict[str, int] = {}
    for i, policy_msg in enumerate(request.policies):
        with placed("policies", i):
            policy = convert.policy_from_pb(policy_msg)
            if policy.name in named:
                raise Invalid("policy.name", f"policy {policy.name!r} is given twice (also "
                              f"policies[{named[policy.name]}])")
            named[policy.name] = i
            policies.create_policy(scratch, policy)
    containers = []
    for i, container_msg in enumerate(request.containers):
        with placed("containers", i):
            containers.append((i, convert.container_from_pb(container_msg)))
    for i, container in sorted(containers, key=lambda ic: (ic[1].donor is not None, ic[1].name)):
        with placed("containers", i):
            apply_container(state, container)
    return revision


def scratch_copy(store: Store) -> tuple[MemoryStore, int]:
    """Everything ``store`` holds, read at one revision, in a new in-memory store."""
    kvs, revision = store.range("/")
    scratch = MemoryStore(history=1)
    if kvs:
        scratch.txn([], [Put(kv.key, kv.value) for kv in kvs])
    return scratch, revision


def assume_image(store: Store, ref: str) -> None:
    """Record a stand-in for an image the caller loads first, unless one of that name is
    there already (then the real one resolves)."""
    with contextlib.suppress(NotFound):
        images.resolve(store, ref, "image")
        return
    name = image_name(ref, "image")
    if name.startswith("sha256:"):
        record = images.ImageRecord(name)
    else:
        record = images.ImageRecord("sha256:" + hashlib.sha256(name.encode()).hexdigest(),
                                    repo_tags=(name,))
    store.txn([], [Put(keys.image_key(record.id), to_json(record))])


def apply_host(state: State, host: Host) -> None:
    """`up`'s CreateHost, or the comparison with the host that exists; then, for a lab host, the
    registration of its agent with that underlay address."""
    try:
        state.create_host(host)
    except AlreadyExists as e:
        if e.field != "host":
            raise
        have = state.get_host(host.name).host
        if not (have.lab or have.underlay_ip == host.underlay_ip):
            raise Invalid("host.underlay_ip", f"host {host.name!r} exists with underlay_ip "
                          f"{have.underlay_ip}; it cannot change in place") from None
    if host.lab and host.underlay_ip:
        have = state.get_host(host.name).host
        state.register_host(dataclasses.replace(have, underlay_ip=host.underlay_ip))


def apply_network(state: State, network: Network) -> None:
    """CreateNetwork, or UpdateNetwork of the one that exists (what the topology leaves at 0
    stays as the controller chose)."""
    try:
        state.create_network(network)
        return
    except AlreadyExists as e:
        if e.field != "network":
            raise
    have, _ = state.get_network(network.name)
    chosen = {f: getattr(have, f) for f in CONTROLLER_CHOSEN if not getattr(network, f)}
    state.update_network(dataclasses.replace(network, **chosen))


def apply_container(state: State, container: Container) -> None:
    """CreateContainer, or UpdateContainer of the one that exists unless it is as asked."""
    try:
        state.create_container(container)
        return
    except AlreadyExists as e:
        if e.field != "container":
            raise
    have = state.get_container(container.name).container
    # What the controller resolves (the image ID) or sdnctl stop/start changes is not asked for.
    if dataclasses.replace(have, image_id="", stopped=False, generation=0) == container:
        return
    state.update_container(container)


@contextlib.contextmanager
def placed(kind: str, index: int) -> Iterator[None]:
    """Turn a refusal of the ``index``-th object of ``kind`` into an :class:`Invalid` whose
    field starts with ``kind[index]``."""
    try:
        yield
    except (Invalid, SdnError) as e:
        field, text = _field_and_text(e)
        where = f"{kind}[{index}]"
        singular = SINGULAR.get(kind, "")
        if singular and (field == singular or field.startswith((singular + ".",
                                                                singular + "["))):
            raise Invalid(where + field[len(singular):], text) from None
        raise Invalid(where, f"{field}: {text}" if field else text) from None


def _field_and_text(error: Invalid | SdnError) -> tuple[str, str]:
    """The field a domain error names (if any) and what it says about it."""
    if isinstance(error, Invalid):
        return error.field, error.message
    if isinstance(error, NotFound):
        return error.field, f"{error.name!r} not found"
    message = str(error)
    field = getattr(error, "field", "")
    if field and message.startswith(field + ": "):
        return field, message[len(field) + 2:]
    match = _LEADING_FIELD.match(message)
    if match:
        return match[1] + match[2], match[3]
    return field, message
