"""The shared model: what hosts, networks and containers are, as plain frozen data.

Topology files, the controller's store and the agents all speak in these types. Nothing here does
I/O; conversion to and from JSON (the store's encoding) lives beside the types so that every
layer encodes them the same way.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, TypeVar

#: Names of hosts, networks and containers: a DNS label, short enough to appear in a hostname.
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
NAME_MAX = 63

DRIVERS = ("bridge",)
DEFAULT_HOST_PREFIX = 24
DEFAULT_MTU = 1500
DEFAULT_INTERFACE = "eth0"

# Container states reported by agents.
STATE_PENDING = "pending"  # desired, not yet reported by its host's agent
STATE_CREATED = "created"  # namespace and network ready, process not started
STATE_RUNNING = "running"
STATE_EXITED = "exited"
STATE_ERROR = "error"


class Invalid(ValueError):
    """Bad input. ``field`` names the offending field (``networks[0].subnet``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def check_name(value: object, field_name: str) -> str:
    """Return ``value`` if it is a valid object name, else raise :class:`Invalid`."""
    if not isinstance(value, str) or not value:
        raise Invalid(field_name, "expected a non-empty string")
    if len(value) > NAME_MAX:
        raise Invalid(field_name, f"{value[:20]!r}... is longer than {NAME_MAX} characters")
    if not NAME_RE.match(value):
        raise Invalid(
            field_name,
            f"{value!r} is not a valid name (lower-case letters, digits and '-', "
            "starting and ending with a letter or digit)",
        )
    return value


@dataclass(frozen=True)
class Host:
    name: str
    underlay_ip: str = ""
    lab: bool = False
    #: Filled in by the agent when it registers.
    agent_pid: int = 0
    netns: str = ""


@dataclass(frozen=True)
class Network:
    name: str
    subnet: str  # the network's whole CIDR, e.g. 10.88.0.0/16
    driver: str = "bridge"
    host_prefix: int = DEFAULT_HOST_PREFIX  # prefix length of each host's lease
    mtu: int = DEFAULT_MTU
    masquerade: bool = True


@dataclass(frozen=True)
class Container:
    name: str
    host: str
    network: str
    command: tuple[str, ...] = ("sleep", "infinity")
    interface: str = DEFAULT_INTERFACE


@dataclass(frozen=True)
class Lease:
    """A host's share of a network: the subnet its containers take addresses from."""

    network: str
    host: str
    subnet: str  # CIDR, e.g. 10.88.0.0/24
    gateway: str  # first usable address of the subnet, held by the host's bridge


@dataclass(frozen=True)
class Allocation:
    """One address handed to one (network, container, interface)."""

    network: str
    container: str
    interface: str
    address: str  # plain address, e.g. 10.88.0.2
    prefixlen: int  # of the host's lease


@dataclass(frozen=True)
class HostStatus:
    """What the host's current agent last reported (cleared when a new agent registers)."""

    observed_revision: int = 0
    containers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContainerStatus:
    name: str
    state: str = STATE_PENDING
    pid: int = 0
    netns: str = ""
    message: str = ""


T = TypeVar("T")


def to_json(obj: Any) -> bytes:
    """Encode a model object (a dataclass) as compact, key-sorted JSON."""
    return json.dumps(dataclasses.asdict(obj), sort_keys=True, separators=(",", ":")).encode()


def from_json(cls: type[T], data: bytes) -> T:
    """Decode what :func:`to_json` wrote. Unknown keys are ignored, so old readers keep working."""
    raw = json.loads(data)
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in names:
            continue
        if isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


__all__ = [
    "DRIVERS",
    "Allocation",
    "Container",
    "ContainerStatus",
    "Host",
    "HostStatus",
    "Invalid",
    "Lease",
    "Network",
    "check_name",
    "from_json",
    "to_json",
]
