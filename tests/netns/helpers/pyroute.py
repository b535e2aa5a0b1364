"""pyroute2, the tests' own netlink client: what the product made, read back by a library
the product does not use (agent.kernel.rtnl speaks rtnetlink itself)."""

from __future__ import annotations

from pyroute2 import IPRoute

from agent.kernel.netns import open_netlink_fd


def iproute_in(path: str | None) -> IPRoute:
    """An ``IPRoute`` whose socket lives in the namespace at ``path``, opened without forking.

    pyroute2 0.9.7 binds an ``IPRoute`` to the thread that made it (from another thread a
    request fails with ENOTSOCK): use it from that thread only.
    """
    return IPRoute(fileno=open_netlink_fd(path))
