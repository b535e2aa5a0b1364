"""Bandwidth limits of bridged containers, in the kernel (issue 22), read and written in raw
rtnetlink requests (``rtnl``).

Design note. The semantics of the CNI ``bandwidth`` plugin, on the host side of the container's
veth (the container cannot undo them):

- **ingress** (into the container) is the host veth's egress: a TBF as its root qdisc;
- **egress** (out of the container) arrives on the host veth's ingress, where no qdisc can queue:
  an ``ingress`` qdisc with a u32 match-all filter redirects it (``mirred egress redirect``) to
  an IFB device of its own (``sdnf<hash>``), whose root TBF shapes it.

Rates are bits per second; the burst (bytes) defaults to 50 ms at the rate, at least 16 kB (a
TBF's bucket must hold at least a packet; a bigger one lets a short flow exceed the rate);
latency 25 ms bounds the queue, as the CNI plugin does. A change is made in place (``replace``
of the TBF; the container keeps running); a removed limit deletes our qdisc and the IFB.
``Shaper`` remembers what it set per veth, so an unchanged pass costs one link dump; a full pass
reads the qdiscs back, all in one dump (drift is repaired).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.kernel import rtnl
from agent.kernel.errors import KernelError
from agent.kernel.linkbase import write
from agent.kernel.netns import open_netlink_fd
from agent.kernel.rtnl import NetlinkError
from agent.names import IFB_PREFIX, ifb_name

LATENCY_US = 25_000
BURST_MIN = 16000
MISSING = (errno.ENOENT, errno.EINVAL)  # what deleting a qdisc that is not there answers


@dataclass(frozen=True)
class Shape:
    """What one veth's container may use: bits per second in and out (0: no limit)."""

    ingress_bps: int = 0
    egress_bps: int = 0
    burst_bytes: int = 0

    @property
    def empty(self) -> bool:
        return not (self.ingress_bps or self.egress_bps)


def burst_of(rate_bps: int, burst_bytes: int) -> int:
    return burst_bytes or max(rate_bps // 8 // 20, BURST_MIN)


class Shaper:
    """The limits of our veths in one namespace (the caller's: the agent is in its host's)."""

    def __init__(self) -> None:
        self._set: dict[str, Shape] = {}  # veth -> what we set (and believe is there)

    def apply(self, wanted: Mapping[str, Shape], full: bool = False) -> dict[str, str]:
        """Make every existing veth of ``wanted`` shaped as it says (an empty Shape: no
        limits); forget veths that went. Returns errors by veth."""
        errors: dict[str, str] = {}
        if not any(not s.empty for s in wanted.values()) and not self._set and not full:
            return errors
        with rtnl.Reader(open_netlink_fd(None)) as reader:
            links = {link.ifname: link.index for link in reader.links()}
            # A full pass reads every qdisc back in ONE dump.
            qdiscs = _qdiscs_by_index(reader.qdiscs()) if full else {}
            for veth, shape in sorted(wanted.items()):
                if veth not in links:
                    self._set.pop(veth, None)
                    continue
                # Between full passes, a veth we never shaped holds no limits (we made it).
                have = self._read(qdiscs, links, veth) if full else self._set.get(veth, Shape())
                if have == shape:
                    self._remember(veth, shape)
                    continue
                try:
                    self._write(reader, links, veth, have, shape)
                    self._remember(veth, shape)
                except (NetlinkError, KernelError) as e:
                    self._set.pop(veth, None)
                    errors[veth] = f"could not set bandwidth limits on {veth}: {e}"
            for veth in [v for v in self._set if v not in wanted]:
                del self._set[veth]
            # IFB devices whose veth is gone (the container was removed): ours to delete.
            kept = {ifb_name(v) for v in links if not v.startswith(IFB_PREFIX)}
            gone = [rtnl.link_delete(index=index) for name, index in links.items()
                    if name.startswith(IFB_PREFIX) and name not in kept]
            if gone:
                write(reader, gone, "could not delete the IFB devices of removed containers",
                      ok=(errno.ENODEV,))
        return errors

    def _remember(self, veth: str, shape: Shape) -> None:
        """Keep the limits we set; none is not kept, so a host without limits opens no
        netlink socket between full passes."""
        if shape.empty:
            self._set.pop(veth, None)
        else:
            self._set[veth] = shape

    def _read(self, qdiscs: Mapping[int, list[rtnl.Qdisc]], links: Mapping[str, int],
              veth: str) -> Shape:
        """What the kernel holds for ``veth`` (``qdiscs``: every qdisc, by link index): our
        TBFs' rates (bursts are taken as set)."""
        ingress = _root_tbf_rate(qdiscs.get(links[veth], []))
        ifb = links.get(ifb_name(veth))
        egress = _root_tbf_rate(qdiscs.get(ifb, [])) if ifb is not None else 0
        if egress and not any(q.kind == "ingress" for q in qdiscs.get(links[veth], [])):
            egress = 0  # an IFB that nothing is redirected to limits nothing
        old = self._set.get(veth)
        burst = old.burst_bytes if old is not None else 0
        return Shape(ingress, egress, burst if (ingress or egress) else 0)

    def _write(self, reader: rtnl.Reader, links: Mapping[str, int], veth: str, have: Shape,
               shape: Shape) -> None:
        index = links[veth]
        if shape.ingress_bps:
            write(reader, [rtnl.tbf_replace(index, shape.ingress_bps,
                                            burst_of(shape.ingress_bps, shape.burst_bytes),
                                            LATENCY_US)], "could not set the ingress limit")
        elif have.ingress_bps or _tbf_rate(reader, index):
            write(reader, [rtnl.qdisc_delete(index)], "could not remove the ingress limit",
                  ok=MISSING)
        ifb = ifb_name(veth)
        if shape.egress_bps:
            ifb_index = links.get(ifb)
            if ifb_index is None:
                write(reader, [rtnl.link_add(ifb, "ifb", up=True)], f"could not add {ifb!r}")
                link = reader.link(ifb)
                if link is None:
                    raise KernelError(f"could not read back {ifb!r}")
                ifb_index = link.index
            requests = [rtnl.tbf_replace(ifb_index, shape.egress_bps,
                                         burst_of(shape.egress_bps, shape.burst_bytes),
                                         LATENCY_US)]
            if not any(q.kind == "ingress" for q in reader.qdiscs() if q.index == index):
                requests += [rtnl.ingress_add(index), rtnl.redirect_filter(index, ifb_index)]
            write(reader, requests, "could not set the egress limit")
        else:
            requests = [rtnl.qdisc_delete(index, ingress=True)]
            if ifb in links:
                requests.append(rtnl.link_delete(index=links[ifb]))
            write(reader, requests, "could not remove the egress limit",
                  ok=(*MISSING, errno.ENODEV))


def _qdiscs_by_index(qdiscs: Iterable[rtnl.Qdisc]) -> dict[int, list[rtnl.Qdisc]]:
    """``qdiscs`` by link index."""
    found: dict[int, list[rtnl.Qdisc]] = {}
    for q in qdiscs:
        found.setdefault(q.index, []).append(q)
    return found


def _tbf_rate(reader: rtnl.Reader, index: int) -> int:
    """Bits per second of the root TBF of ``index`` (0: none)."""
    return _root_tbf_rate(q for q in reader.qdiscs() if q.index == index)


def _root_tbf_rate(qdiscs: Iterable[rtnl.Qdisc]) -> int:
    """Bits per second of the root TBF among one link's ``qdiscs`` (0: none)."""
    return next((q.tbf_rate for q in qdiscs if q.kind == "tbf" and q.parent == rtnl.TC_H_ROOT),
                0)


__all__ = ["Shape", "Shaper", "burst_of"]
