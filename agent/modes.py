"""Network modes: Docker's four container network models as small drivers.

A mode answers three questions about a container, and nothing else:
  - does it own a *sandbox* — network, UTS and IPC namespaces the agent pins apart from any
    process, like a pause container — so that it and anything joined to it survive restarts?
  - which bridge network, if any, is it attached to (a veth, an address, a route)?
  - in which namespaces does its process run?

    none       closed: its own sandbox with only ``lo``
    <network>  bridged: its own sandbox, a veth into the network's bridge
    container: joined: no sandbox of its own; the donor's network namespace (and, if asked,
               its UTS and IPC namespaces), which outlive the donor's process
    host       open: no sandbox; the host's network namespace, its own UTS and IPC

The registry is a literal dict (STYLE.md): no import-time registration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from agent.desired import DesiredContainer
from sdnctl.api.model import MODE_BRIDGE, MODE_CONTAINER, MODE_HOST, MODE_NONE

#: Sandbox namespace kinds -> path, for a container name.
SandboxPaths = Callable[[str], dict[str, str]]


@dataclass(frozen=True)
class Namespaces:
    """Where a container's process runs. None: the host's network namespace; a new UTS (named
    after the container) or IPC namespace."""

    net: str | None
    uts: str | None
    ipc: str | None


class Mode(Protocol):
    owns_sandbox: bool

    def bridge_network(self, ctr: DesiredContainer) -> str | None: ...

    def waiting_for(self, ctr: DesiredContainer,
                    containers: Mapping[str, DesiredContainer]) -> str | None:
        """Why the container cannot be set up yet (None: it can)."""
        ...

    def namespaces(self, ctr: DesiredContainer, sandbox: SandboxPaths) -> Namespaces: ...


class _Standalone:
    """Defaults: attached to no bridge, waiting for nothing."""

    def bridge_network(self, ctr: DesiredContainer) -> str | None:
        return None

    def waiting_for(self, ctr: DesiredContainer,
                    containers: Mapping[str, DesiredContainer]) -> str | None:
        return None


class Closed(_Standalone):
    owns_sandbox = True

    def namespaces(self, ctr: DesiredContainer, sandbox: SandboxPaths) -> Namespaces:
        own = sandbox(ctr.name)
        return Namespaces(own["net"], own["uts"], own["ipc"])


class Bridged(Closed):
    def bridge_network(self, ctr: DesiredContainer) -> str | None:
        return ctr.target


class Joined(_Standalone):
    owns_sandbox = False

    def waiting_for(self, ctr: DesiredContainer,
                    containers: Mapping[str, DesiredContainer]) -> str | None:
        donor = containers.get(ctr.target)
        if donor is None:
            return f"waiting for container {ctr.target!r} (its network donor) on this host"
        if not MODES[donor.mode].owns_sandbox:
            return f"container {ctr.target!r} has no network namespace of its own to share"
        return None

    def namespaces(self, ctr: DesiredContainer, sandbox: SandboxPaths) -> Namespaces:
        donor = sandbox(ctr.target)
        return Namespaces(donor["net"],
                          donor["uts"] if "uts" in ctr.share else None,
                          donor["ipc"] if "ipc" in ctr.share else None)


class Open(_Standalone):
    owns_sandbox = False

    def namespaces(self, ctr: DesiredContainer, sandbox: SandboxPaths) -> Namespaces:
        return Namespaces(None, None, None)


MODES: dict[str, Mode] = {
    MODE_NONE: Closed(),
    MODE_BRIDGE: Bridged(),
    MODE_CONTAINER: Joined(),
    MODE_HOST: Open(),
}
