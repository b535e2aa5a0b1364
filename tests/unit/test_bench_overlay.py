"""bench/overlay.py's prober reads the kernel's announcements of a peer's three entries (the
join and leave figures of bench/overlay.py and bench/scale.py), without root: what they say,
the moment each host was done, and the listener that hears them (over socket pairs)."""

from __future__ import annotations

import importlib
import socket
import struct
import subprocess
import sys
import time
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


PEER = ("10.70.9.0/24", "10.70.9.0", "0e:00:00:00:00:09", "192.0.2.9")


def done_announcements(index: int, underlay: str = "192.0.2.9") -> list[bytes]:
    return [route(rtnl.RTM_NEWROUTE, "10.70.9.0", 24, "10.70.9.0", index),
            neighbour(rtnl.RTM_NEWNEIGH, socket.AF_INET, index, "10.70.9.0",
                      "0e:00:00:00:00:09"),
            neighbour(rtnl.RTM_NEWNEIGH, socket.AF_BRIDGE, index, underlay,
                      "0e:00:00:00:00:09")]


def test_a_host_is_done_at_the_moment_of_the_announcement_that_completed_it(
        overlay: ModuleType) -> None:
    peer = overlay.PeerKey(*PEER)
    replay = overlay.Replay({"a": dict(overlay.ABSENT), "b": dict(overlay.ABSENT),
                             "c": dict(overlay.ABSENT)}, {}, set())
    a, b = done_announcements(5), done_announcements(7, underlay="192.0.2.99")
    heard = [(1.0, "a", a[0]), (1.5, "b", b[0]), (2.0, "a", a[1]), (2.5, "b", b[1]),
             (3.0, "a", a[2]), (3.5, "b", b[2]),  # b's FDB entry points elsewhere
             (4.0, "c", None),  # c's socket overran
             (5.0, "a", route(rtnl.RTM_DELROUTE, "10.70.9.0", 24, "10.70.9.0", 5))]
    replay.hear(heard, {"a": 5, "b": 7, "c": 9}, peer, lambda got: got[0] == 3)
    assert replay.done_at == {"a": 3.0}  # done once, not undone by what came after
    assert replay.states["b"]["fdb"] == (False, True)
    assert replay.lost == {"c"}
    gone = overlay.Replay({"a": {k: (True, True) for k in overlay.ABSENT}}, {}, set())
    went = [route(rtnl.RTM_DELROUTE, "10.70.9.0", 24, "10.70.9.0", 5),
            neighbour(rtnl.RTM_DELNEIGH, socket.AF_INET, 5, "10.70.9.0", "0e:00:00:00:00:09"),
            neighbour(rtnl.RTM_DELNEIGH, socket.AF_BRIDGE, 5, "192.0.2.9",
                      "0e:00:00:00:00:09")]
    gone.hear([(1.0 + i, "a", data) for i, data in enumerate(went)], {"a": 5}, peer,
              lambda got: got[1] == 0)
    assert gone.done_at == {"a": 3.0}


def test_the_listener_passes_on_each_datagram_with_its_moment_and_answers_a_sync(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    heard = importlib.import_module("_heard")
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2)]
    for _, inside in pairs:
        inside.setblocking(False)
    before = time.monotonic()
    for i, (outside, _) in enumerate(pairs):
        outside.send(b"first of %d" % i)
    pairs[1][0].send(b"second of 1")
    listener = subprocess.Popen([sys.executable, str(BENCH / "_heard.py"),
                                 *(str(inside.fileno()) for _, inside in pairs)],
                                pass_fds=[inside.fileno() for _, inside in pairs],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert listener.stdin is not None and listener.stdout is not None
        listener.stdin.write(b"x")
        listener.stdin.flush()
        records: list[tuple[int, bytes]] = []
        while True:
            moment, place, length = heard.RECORD.unpack(
                listener.stdout.read(heard.RECORD.size))
            assert before <= moment <= time.monotonic()
            if place == heard.SYNC:
                break  # what the sockets held when the sync was asked came before it
            records.append((place, listener.stdout.read(length)))
        assert sorted(records) == [(0, b"first of 0"), (1, b"first of 1"), (1, b"second of 1")]
        listener.stdin.close()  # it ends
        assert listener.wait(timeout=10) == 0
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
        for outside, inside in pairs:
            outside.close()
            inside.close()
