"""The rtnetlink reader's parsing and request sequencing, without root: messages are packed
here as the kernel lays them out (its agreement with the real kernel is checked in
tests/netns/test_kernel.py), and the far end of a socket pair answers as the kernel would."""

from __future__ import annotations

import errno
import socket
import struct
import threading
from collections.abc import Callable

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from agent.kernel import rtnl


def attr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def message(kind: int, seq: int, payload: bytes, flags: int = 0) -> bytes:
    length = rtnl.NLMSGHDR.size + len(payload)
    return rtnl.NLMSGHDR.pack(length, kind, flags, seq, 0) + payload + b"\0" * (-length % 4)


def link_payload(index: int, name: str, flags: int = 1, kind: str | None = "veth",
                 alias: str | None = None, master: int | None = None) -> bytes:
    body = rtnl.IFINFOMSG.pack(socket.AF_UNSPEC, 1, index, flags, 0)
    body += attr(rtnl.IFLA_IFNAME, name.encode() + b"\0")
    body += attr(rtnl.IFLA_MTU, struct.pack("=I", 1400))
    body += attr(rtnl.IFLA_ADDRESS, bytes([2, 0x42, 10, 0, 0, index]))
    if kind is not None:
        body += attr(rtnl.IFLA_LINKINFO | 0x8000,  # NLA_F_NESTED, as the kernel sets it
                     attr(rtnl.IFLA_INFO_KIND, kind.encode() + b"\0"))
    if alias is not None:
        body += attr(rtnl.IFLA_IFALIAS, alias.encode() + b"\0")
    if master is not None:
        body += attr(rtnl.IFLA_MASTER, struct.pack("=I", master))
    return body


def address_payload(index: int, address: str, prefixlen: int,
                    family: int = socket.AF_INET) -> bytes:
    return rtnl.IFADDRMSG.pack(family, prefixlen, 0, 0, index) + attr(
        rtnl.IFA_ADDRESS, socket.inet_pton(family, address))


def route_payload(dst_len: int, table: int, gateway: str | None = None, oif: int | None = None,
                  big_table: int | None = None) -> bytes:
    body = rtnl.RTMSG.pack(socket.AF_INET, dst_len, 0, 0, table, 211, 0, 1, 0)
    if big_table is not None:
        body += attr(rtnl.RTA_TABLE, struct.pack("=I", big_table))
    if gateway is not None:
        body += attr(rtnl.RTA_GATEWAY, socket.inet_aton(gateway))
    if oif is not None:
        body += attr(rtnl.RTA_OIF, struct.pack("=I", oif))
    return body


def test_parse_link_reads_the_nested_kind_and_our_attributes() -> None:
    link = rtnl.parse_link(memoryview(link_payload(7, "eth0", alias="sdnctl:ctr/a/eth0",
                                                   master=3)))
    assert link == rtnl.Link(index=7, flags=1, mtu=1400, mac="02:42:0a:00:00:07",
                             ifname="eth0", kind="veth", alias="sdnctl:ctr/a/eth0", master=3)
    bare = rtnl.parse_link(memoryview(link_payload(1, "lo", flags=0, kind=None)))
    assert (bare.kind, bare.alias, bare.master, bare.flags) == (None, None, None, 0)


def test_parse_address_and_route() -> None:
    assert rtnl.parse_ipv4_address(memoryview(address_payload(4, "10.1.2.3", 24))) == \
        (4, "10.1.2.3/24")
    assert rtnl.parse_ipv4_address(memoryview(address_payload(4, "fe80::1", 64,
                                                              socket.AF_INET6))) is None
    route = rtnl.parse_ipv4_route(memoryview(route_payload(0, 254, "10.1.2.1", 4)))
    assert route == rtnl.Route(dst_len=0, table=254, proto=211, gateway="10.1.2.1", oif=4)
    # Tables above 255 exist only in RTA_TABLE (rtm_table says RT_TABLE_COMPAT, 252).
    assert rtnl.parse_ipv4_route(memoryview(route_payload(24, 252, big_table=1000))) == \
        rtnl.Route(dst_len=24, table=1000, proto=211, gateway=None, oif=None)


def test_truncated_input_stops_parsing_instead_of_raising() -> None:
    whole = link_payload(7, "eth0", alias="sdnctl:x")
    cut = rtnl.attributes(whole[:-4], rtnl.IFINFOMSG.size)
    assert rtnl.IFLA_IFNAME in cut and rtnl.IFLA_IFALIAS not in cut
    two = message(rtnl.RTM_NEWLINK, 1, whole) + message(rtnl.RTM_NEWLINK, 1, whole)
    assert len(list(rtnl.messages(two))) == 2
    assert len(list(rtnl.messages(two[:-1]))) == 1


Kernel = Callable[[int, int, int], list[bytes]]  # (type, flags, seq) -> datagrams to answer


def with_kernel(answer: Kernel, use: Callable[[rtnl.Reader], object]) -> object:
    """Run ``use`` on a Reader whose far end answers every request with ``answer``."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    requests: list[tuple[int, int, int]] = []

    def serve() -> None:
        while data := theirs.recv(65536):
            _length, kind, flags, seq, _port = rtnl.NLMSGHDR.unpack_from(data)
            requests.append((kind, flags, seq))
            for datagram in answer(kind, flags, seq):
                theirs.send(datagram)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        with rtnl.Reader(ours.detach()) as reader:
            return use(reader), requests
    finally:
        server.join(5)
        theirs.close()


def test_a_dump_spans_datagrams_and_stale_answers_are_skipped() -> None:
    def answer(kind: int, flags: int, seq: int) -> list[bytes]:
        assert kind == rtnl.RTM_GETADDR and flags == rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP
        return [message(rtnl.RTM_NEWADDR, seq - 1, address_payload(9, "10.9.9.9", 8))  # stale
                + message(rtnl.RTM_NEWADDR, seq, address_payload(2, "10.0.0.2", 24)),
                message(rtnl.RTM_NEWADDR, seq, address_payload(3, "10.0.0.3", 24))
                + message(rtnl.NLMSG_DONE, seq, struct.pack("=i", 0))]

    found, requests = with_kernel(answer, lambda r: (r.ipv4_addresses(), r.ipv4_addresses()))
    assert found == ([(2, "10.0.0.2/24"), (3, "10.0.0.3/24")],) * 2
    assert [seq for _, _, seq in requests] == [1, 2]


def test_errors_raise_with_their_code_and_enodev_means_no_link() -> None:
    def answer(kind: int, flags: int, seq: int) -> list[bytes]:
        code = errno.ENODEV if seq == 1 else errno.EPERM
        return [message(rtnl.NLMSG_ERROR, seq, struct.pack("=i", -code) + bytes(16))]

    def use(reader: rtnl.Reader) -> object:
        assert reader.link("eth0") is None
        with pytest.raises(NetlinkError) as failure:
            reader.link("eth0")
        return failure.value.code

    code, requests = with_kernel(answer, use)
    assert code == errno.EPERM
    assert [(kind, flags) for kind, flags, _ in requests] == [(rtnl.RTM_GETLINK,
                                                               rtnl.NLM_F_REQUEST)] * 2
