"""bench/overlay.py's prober reads the kernel's announcements of a peer's three entries (the
join and leave figures of bench/overlay.py and bench/scale.py), without root."""

from __future__ import annotations

import importlib
import socket
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest
from test_rtnl import attr, message

from agent.kernel import rtnl

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def overlay(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    module = importlib.import_module("overlay")
    monkeypatch.delitem(sys.modules, "overlay")
    return module


def route(kind: int, dst: str, length: int, gateway: str, oif: int) -> bytes:
    body = rtnl.RTMSG.pack(socket.AF_INET, length, 0, 0, 254, 211, 0, 1, 0) + \
        attr(rtnl.RTA_DST, socket.inet_aton(dst)) + \
        attr(rtnl.RTA_GATEWAY, socket.inet_aton(gateway)) + \
        attr(rtnl.RTA_OIF, struct.pack("=I", oif))
    return message(kind, 0, body)


def neighbour(kind: int, family: int, index: int, dst: str, mac: str) -> bytes:
    body = rtnl.NDMSG.pack(family, index, 0x80, 0, 0) + \
        attr(rtnl.NDA_DST, socket.inet_aton(dst)) + \
        attr(rtnl.NDA_LLADDR, bytes.fromhex(mac.replace(":", "")))
    return message(kind, 0, body)


def test_the_announcements_say_which_entries_came_right_and_which_went(
        overlay: ModuleType) -> None:
    peer = overlay.PeerKey("10.70.9.0/24", "10.70.9.0", "0e:00:00:00:00:09", "192.0.2.9")
    came = b"".join([
        route(rtnl.RTM_NEWROUTE, "10.70.9.0", 24, "10.70.9.0", 5),
        route(rtnl.RTM_NEWROUTE, "10.70.8.0", 24, "10.70.8.0", 5),  # another peer's
        neighbour(rtnl.RTM_NEWNEIGH, socket.AF_INET, 5, "10.70.9.0", "0e:00:00:00:00:09"),
        neighbour(rtnl.RTM_NEWNEIGH, socket.AF_BRIDGE, 5, "192.0.2.99", "0e:00:00:00:00:09"),
        neighbour(rtnl.RTM_NEWNEIGH, socket.AF_INET, 6, "10.70.9.0", "0e:00:00:00:00:09"),
    ])
    assert overlay.announced(came, 5, peer) == {
        "route": (True, True), "neighbour": (True, True),
        "fdb": (False, True)}  # present, with the wrong destination
    went = route(rtnl.RTM_DELROUTE, "10.70.9.0", 24, "10.70.9.0", 5) + neighbour(
        rtnl.RTM_DELNEIGH, socket.AF_BRIDGE, 5, "192.0.2.99", "0e:00:00:00:00:09") + neighbour(
        rtnl.RTM_NEWNEIGH, socket.AF_BRIDGE, 5, "192.0.2.9", "0e:00:00:00:00:09")
    assert overlay.announced(went, 5, peer) == {"route": (False, False), "fdb": (True, True)}
