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

from agent.kernel import rtnl
from agent.kernel.rtnl import NetlinkError


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


def test_parse_link_reads_a_vxlan_devices_data() -> None:
    def vxlan(local: bytes) -> bytes:
        data = attr(rtnl.IFLA_VXLAN_ID, struct.pack("=I", 42)) + local + \
            attr(rtnl.IFLA_VXLAN_LINK, struct.pack("=I", 2)) + \
            attr(rtnl.IFLA_VXLAN_LEARNING, b"\0") + \
            attr(rtnl.IFLA_VXLAN_PORT, struct.pack("!H", 4789))  # network byte order
        body = rtnl.IFINFOMSG.pack(socket.AF_UNSPEC, 1, 9, 1, 0) + \
            attr(rtnl.IFLA_IFNAME, b"sdnx1\0") + attr(rtnl.IFLA_LINKINFO | 0x8000, attr(
                rtnl.IFLA_INFO_KIND, b"vxlan\0") + attr(rtnl.IFLA_INFO_DATA | 0x8000, data))
        return body

    v4 = rtnl.parse_link(memoryview(vxlan(attr(rtnl.IFLA_VXLAN_LOCAL,
                                               socket.inet_aton("192.0.2.1")))))
    assert v4.vxlan == rtnl.Vxlan(vni=42, port=4789, local="192.0.2.1", link=2, learning=False)
    v6 = rtnl.parse_link(memoryview(vxlan(attr(rtnl.IFLA_VXLAN_LOCAL6, socket.inet_pton(
        socket.AF_INET6, "2001:db8::1")))))
    assert v6.vxlan is not None and (v6.vxlan.local, v6.vxlan.remote) == ("2001:db8::1", None)
    # A remote or a group (which the agent's devices never have), an unset one read as none.
    grouped = rtnl.parse_link(memoryview(vxlan(attr(rtnl.IFLA_VXLAN_GROUP,
                                                    socket.inet_aton("239.1.1.1")))))
    assert grouped.vxlan is not None and grouped.vxlan.remote == "239.1.1.1"
    unset = rtnl.parse_link(memoryview(vxlan(attr(rtnl.IFLA_VXLAN_GROUP, bytes(4)))))
    assert unset.vxlan is not None and unset.vxlan.remote is None
    # Only a VXLAN device's data is read as VXLAN attributes.
    assert rtnl.parse_link(memoryview(link_payload(7, "eth0"))).vxlan is None


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


def qdisc_payload(index: int, parent: int, kind: str, options: bytes | None = None) -> bytes:
    body = rtnl.TCMSG.pack(socket.AF_UNSPEC, index, 0x10000, parent, 1)
    body += attr(rtnl.TCA_KIND, kind.encode() + b"\0")
    if options is not None:
        body += attr(rtnl.TCA_OPTIONS | 0x8000, options)  # NLA_F_NESTED
    return body


def tbf_parms(rate_bytes: int) -> bytes:
    """A tc_tbf_qopt: rate and peak rate (tc_ratespec, 12 bytes each), limit, buffer, mtu."""
    ratespec = struct.pack("=BBHhHI", 0, 1, 0, -1, 0, rate_bytes)
    return ratespec + bytes(12) + struct.pack("=III", 3000, 1600, 0)


def test_parse_qdisc_reads_a_tbfs_rate_in_bits_and_its_64_bit_form() -> None:
    slow = rtnl.parse_qdisc(memoryview(qdisc_payload(
        7, rtnl.TC_H_ROOT, "tbf", attr(rtnl.TCA_TBF_PARMS, tbf_parms(1_250_000)))))
    assert slow == rtnl.Qdisc(index=7, parent=rtnl.TC_H_ROOT, kind="tbf", tbf_rate=10_000_000)
    # Past 2^32 bytes per second the 32-bit field is saturated and TCA_TBF_RATE64 holds it.
    fast = rtnl.parse_qdisc(memoryview(qdisc_payload(
        8, rtnl.TC_H_ROOT, "tbf", attr(rtnl.TCA_TBF_PARMS, tbf_parms(0xFFFFFFFF))
        + attr(rtnl.TCA_TBF_RATE64, struct.pack("=Q", 5_000_000_000)))))
    assert fast.tbf_rate == 40_000_000_000
    ingress = rtnl.parse_qdisc(memoryview(qdisc_payload(7, 0xFFFFFFF1, "ingress", b"")))
    assert (ingress.kind, ingress.parent, ingress.tbf_rate) == ("ingress", 0xFFFFFFF1, 0)
    truncated = rtnl.parse_qdisc(memoryview(qdisc_payload(
        7, rtnl.TC_H_ROOT, "tbf", attr(rtnl.TCA_TBF_PARMS, b"\0" * 8))))
    assert truncated.tbf_rate == 0


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


# --- batched writes -------------------------------------------------------------------------


def test_replace_requests_decode_as_pyroute2_reads_them() -> None:
    from pyroute2.netlink.rtnl.ndmsg import ndmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    def decoded(cls: type, request: rtnl.Request) -> object:
        msg = cls(rtnl.NLMSGHDR.pack(rtnl.NLMSGHDR.size + len(request.body), request.kind,
                                     0, 1, 0) + request.body)
        msg.decode()
        return msg

    fdb = decoded(ndmsg, rtnl.fdb_replace(7, "02:AB:00:00:00:01", "192.0.2.5", 0xC0, 2))
    assert (fdb["family"], fdb["ifindex"], fdb["state"], fdb["flags"]) == (  # type: ignore[index]
        socket.AF_BRIDGE, 7, 0xC0, 2)
    assert (fdb.get_attr("NDA_LLADDR"), fdb.get_attr("NDA_DST")) == (  # type: ignore[attr-defined]
        "02:ab:00:00:00:01", "192.0.2.5")
    neigh = decoded(ndmsg, rtnl.neighbour_replace(7, "10.70.5.0", "02:ab:00:00:00:01", 0x80, 211))
    assert (neigh["family"], neigh["ifindex"], neigh["state"]) == (  # type: ignore[index]
        socket.AF_INET, 7, 0x80)
    assert (neigh.get_attr("NDA_DST"), neigh.get_attr("NDA_LLADDR"),  # type: ignore[attr-defined]
            neigh.get_attr("NDA_PROTOCOL")) == (  # type: ignore[attr-defined]
        "10.70.5.0", "02:ab:00:00:00:01", 211)
    route = decoded(rtmsg, rtnl.route_replace("10.70.5.0/24", "10.70.5.0", 7, 254, 211, 4))
    assert (route["dst_len"], route["table"], route["proto"], route["type"],  # type: ignore[index]
            route["flags"]) == (24, 254, 211, 1, 4)  # type: ignore[index]
    assert (route.get_attr("RTA_DST"), route.get_attr("RTA_GATEWAY"),  # type: ignore[attr-defined]
            route.get_attr("RTA_OIF"), route.get_attr("RTA_TABLE")) == (  # type: ignore[attr-defined]
        "10.70.5.0", "10.70.5.0", 7, 254)
    assert {r.flags for r in (rtnl.fdb_replace(1, "02:00:00:00:00:01", "192.0.2.1", 0, 0),
                              rtnl.neighbour_replace(1, "10.0.0.1", "02:00:00:00:00:01", 0, 0),
                              rtnl.route_replace("10.0.0.0/24", "10.0.0.1", 1, 254, 0, 0))} \
        == {rtnl.NLM_F_REPLACE | rtnl.NLM_F_CREATE}


def test_send_all_sends_before_reading_and_returns_each_code_in_order() -> None:
    """Up to SEND_BATCH requests per datagram, acks collected before the next one is sent (in
    any grouping), a stale ack skipped, and an error reported for its own request only."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    received: list[list[tuple[int, int, int]]] = []
    requests = [rtnl.route_replace(f"10.{i // 256}.{i % 256}.0/24", "10.0.0.1", 3, 254,
                                   211, 4) for i in range(300)]

    def serve() -> None:
        theirs.send(message(rtnl.NLMSG_ERROR, 0, struct.pack("=i", 0) + bytes(16)))  # stale
        while sum(map(len, received)) < len(requests):
            data = theirs.recv(1 << 17)
            got, acks, offset = [], [], 0
            while offset < len(data):
                length, kind, flags, seq, _ = rtnl.NLMSGHDR.unpack_from(data, offset)
                got.append((kind, flags, seq))
                code = -errno.EINVAL if seq == 5 else 0
                acks.append(message(rtnl.NLMSG_ERROR, seq, struct.pack("=i", code) + bytes(16)))
                offset += (length + 3) & ~3
            received.append(got)
            for i in range(0, len(acks), 2):
                theirs.send(b"".join(acks[i:i + 2]))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        with rtnl.Reader(ours.detach()) as reader:
            codes = reader.send_all(requests)
    finally:
        server.join(5)
        theirs.close()
    assert codes == [errno.EINVAL if i == 4 else 0 for i in range(len(requests))]
    assert [len(datagram) for datagram in received] == [64, 64, 64, 64, 44]
    sent = [r for datagram in received for r in datagram]
    assert [seq for _, _, seq in sent] == list(range(1, len(requests) + 1))
    assert {(kind, flags) for kind, flags, _ in sent} == {
        (rtnl.RTM_NEWROUTE, rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK | rtnl.NLM_F_REPLACE
         | rtnl.NLM_F_CREATE)}


def test_attachment_requests_decode_as_pyroute2_reads_them() -> None:
    """A CNI attachment's requests (``Links.add_veth``): the veth pair with its peer born in
    another namespace, a link set up with our alias, addresses (IPv6 ``nodad``)."""
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    def decoded(cls: type, request: rtnl.Request) -> object:
        msg = cls(rtnl.NLMSGHDR.pack(rtnl.NLMSGHDR.size + len(request.body), request.kind,
                                     0, 1, 0) + request.body)
        msg.decode()
        return msg

    add = rtnl.veth_add("sdnv01234567", 1450, 9, "eth0", 42, "02:42:0A:47:00:05")
    assert (add.kind, add.flags) == (rtnl.RTM_NEWLINK, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL)
    link = decoded(ifinfmsg, add)
    assert (link["flags"], link["change"]) == (1, 1)  # type: ignore[index]
    assert (link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MTU"),  # type: ignore[attr-defined]
            link.get_attr("IFLA_MASTER")) == ("sdnv01234567", 1450, 9)  # type: ignore[attr-defined]
    info = link.get_attr("IFLA_LINKINFO")  # type: ignore[attr-defined]
    assert info.get_attr("IFLA_INFO_KIND") == "veth"
    peer = info.get_attr("IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert (peer.get_attr("IFLA_IFNAME"), peer.get_attr("IFLA_NET_NS_FD"),
            peer.get_attr("IFLA_MTU"), peer.get_attr("IFLA_ADDRESS")) == (
        "eth0", 42, 1450, "02:42:0a:47:00:05")
    up = decoded(ifinfmsg, rtnl.link_up("sdnctl:ctr/a/eth0", index=3))
    assert (up["index"], up["flags"], up["change"]) == (3, 1, 1)  # type: ignore[index]
    assert up.get_attr("IFLA_IFALIAS") == "sdnctl:ctr/a/eth0"  # type: ignore[attr-defined]
    by_name = decoded(ifinfmsg, rtnl.link_up("x", name="sdnv01234567"))
    assert (by_name["index"], by_name.get_attr("IFLA_IFNAME")) == (  # type: ignore[index]
        0, "sdnv01234567")  # type: ignore[attr-defined]
    # A prepared pair (links.prepare_veth): the peer without a MAC (the kernel picks one);
    # its MAC set with its alias, before the link is up; the pair removed by name.
    bare = decoded(ifinfmsg, rtnl.veth_add("sdnv01234567", 1450, 9, "eth0", 42))
    bare_peer = bare.get_attr("IFLA_LINKINFO").get_attr(  # type: ignore[attr-defined]
        "IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert bare_peer.get_attr("IFLA_ADDRESS") is None and \
        bare_peer.get_attr("IFLA_IFNAME") == "eth0"
    with_mac = decoded(ifinfmsg, rtnl.link_up("a", index=3, mac="02:42:0A:47:00:05"))
    assert (with_mac.get_attr("IFLA_ADDRESS"),  # type: ignore[attr-defined]
            with_mac["flags"]) == ("02:42:0a:47:00:05", 1)  # type: ignore[index]
    gone = rtnl.link_delete("sdnv01234567")
    assert gone.kind == rtnl.RTM_DELLINK and \
        decoded(ifinfmsg, gone).get_attr("IFLA_IFNAME") == "sdnv01234567"  # type: ignore[attr-defined]
    # The lab's hosts' links (sdnctl/lab): made in a device group, deleted by it at once.
    assert bare.get_attr("IFLA_GROUP") is None  # type: ignore[attr-defined]
    grouped = decoded(ifinfmsg, rtnl.veth_add("h0123abcd", 1500, 4, "eth0", 42, group=7))
    assert grouped.get_attr("IFLA_GROUP") == 7  # type: ignore[attr-defined]
    by_group = rtnl.group_delete(7)
    whole = decoded(ifinfmsg, by_group)
    assert by_group.kind == rtnl.RTM_DELLINK and (whole["index"],  # type: ignore[index]
            whole.get_attr("IFLA_GROUP"), whole.get_attr("IFLA_IFNAME")) == (  # type: ignore[attr-defined]
        0, 7, None)
    for cidr, family, flags in (("10.71.0.5/24", socket.AF_INET, 0),
                                ("fd00:71::5/64", socket.AF_INET6, 2)):
        addr = decoded(ifaddrmsg, rtnl.address_add(3, cidr))
        assert (addr["family"], addr["prefixlen"], addr["flags"],  # type: ignore[index]
                addr["index"]) == (family, int(cidr.split("/")[1]), flags, 3)
        assert addr.get_attr("IFA_LOCAL") == addr.get_attr(  # type: ignore[attr-defined]
            "IFA_ADDRESS") == cidr.split("/")[0]  # type: ignore[attr-defined]


def test_link_and_address_requests_decode_as_pyroute2_reads_them() -> None:
    """The agent's other link writes (``linkbase``, ``vxlan``): a link added with its kind's
    data, only the attributes that differ set in place, an address deleted."""
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    def decoded(cls: type, request: rtnl.Request) -> object:
        msg = cls(rtnl.NLMSGHDR.pack(rtnl.NLMSGHDR.size + len(request.body), request.kind,
                                     0, 1, 0) + request.body)
        msg.decode()
        return msg

    vxlan = rtnl.link_add("sdnx01234567", "vxlan", mtu=1450, mac="02:AA:00:00:00:01", up=True,
                          data=rtnl.vxlan_data(vni=42, port=4789, local="192.0.2.5", link=3,
                                               learning=False))
    assert (vxlan.kind, vxlan.flags) == (rtnl.RTM_NEWLINK, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL)
    link = decoded(ifinfmsg, vxlan)
    assert (link["flags"], link["change"], link.get_attr("IFLA_MTU"),  # type: ignore[index]
            link.get_attr("IFLA_ADDRESS"), link.get_attr("IFLA_MASTER")) == (  # type: ignore[attr-defined]
        1, 1, 1450, "02:aa:00:00:00:01", None)
    data = link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")  # type: ignore[attr-defined]
    assert (data.get_attr("IFLA_VXLAN_ID"), data.get_attr("IFLA_VXLAN_PORT"),
            data.get_attr("IFLA_VXLAN_LOCAL"), data.get_attr("IFLA_VXLAN_LINK"),
            data.get_attr("IFLA_VXLAN_LEARNING")) == (42, 4789, "192.0.2.5", 3, 0)
    six = decoded(ifinfmsg, rtnl.link_set(5, kind="vxlan", data=rtnl.vxlan_data(
        local="2001:db8::5")))
    assert (six["index"], six["flags"], six["change"]) == (5, 0, 0)  # type: ignore[index]
    assert six.get_attr("IFLA_LINKINFO").get_attr(  # type: ignore[attr-defined]
        "IFLA_INFO_DATA").get_attr("IFLA_VXLAN_LOCAL6") == "2001:db8::5"
    fix = decoded(ifinfmsg, rtnl.link_set(5, master=9, alias="sdnctl:net/a"))
    assert (fix.get_attr("IFLA_MASTER"), fix.get_attr("IFLA_IFALIAS"),  # type: ignore[attr-defined]
            fix.get_attr("IFLA_MTU"), fix.get_attr("IFLA_LINKINFO")) == (  # type: ignore[attr-defined]
        9, "sdnctl:net/a", None, None)
    handover = decoded(ifinfmsg, rtnl.link_add(
        "sdnv0", "veth", mtu=1400, master=2, up=True,
        data=rtnl.veth_peer("dv0", 1400, mac="02:00:00:00:00:09")))
    peer = handover.get_attr("IFLA_LINKINFO").get_attr(  # type: ignore[attr-defined]
        "IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert (peer.get_attr("IFLA_NET_NS_FD"), peer.get_attr("IFLA_ADDRESS")) == (
        None, "02:00:00:00:00:09")
    assert decoded(ifinfmsg, rtnl.link_delete(index=5))["index"] == 5  # type: ignore[index]
    gone = decoded(ifaddrmsg, rtnl.address_delete(4, "2001:db8::1/64"))
    assert (gone["family"], gone["prefixlen"], gone["index"],  # type: ignore[index]
            gone.get_attr("IFA_ADDRESS")) == (  # type: ignore[attr-defined]
        socket.AF_INET6, 64, 4, "2001:db8::1")
    assert rtnl.address_delete(4, "10.0.0.1/24").kind == rtnl.RTM_DELADDR


def test_traffic_control_requests_decode_as_pyroute2_reads_them() -> None:
    """The bandwidth limits' requests (``shaping``): a TBF with tc's queue limit and the burst
    in bytes (a rate beyond 32 bits in its 64-bit attribute), the ingress qdisc and the u32
    filter redirecting everything to an IFB."""
    from pyroute2.netlink.rtnl.tcmsg import tcmsg

    def decoded(request: rtnl.Request) -> object:
        msg = tcmsg(rtnl.NLMSGHDR.pack(rtnl.NLMSGHDR.size + len(request.body), request.kind,
                                       0, 1, 0) + request.body)
        msg.decode()
        return msg

    tbf = rtnl.tbf_replace(7, 8_000_000, 16_000, 25_000)
    assert (tbf.kind, tbf.flags) == (rtnl.RTM_NEWQDISC, rtnl.NLM_F_REPLACE | rtnl.NLM_F_CREATE)
    msg = decoded(tbf)
    assert (msg["index"], msg["handle"], msg["parent"],  # type: ignore[index]
            msg.get_attr("TCA_KIND")) == (7, 0x10000, rtnl.TC_H_ROOT, "tbf")  # type: ignore[attr-defined]
    parms = msg.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")  # type: ignore[attr-defined]
    assert (parms["rate"], parms["limit"]) == (1_000_000, 1_000_000 // 40 + 16_000)
    options = rtnl.attributes(rtnl.attributes(tbf.body, rtnl.TCMSG.size)[rtnl.TCA_OPTIONS], 0)
    assert rtnl.U32.unpack(options[rtnl.TCA_TBF_BURST]) == (16_000,)
    assert rtnl.TCA_TBF_RATE64 not in options
    fast_request = rtnl.tbf_replace(7, 40_000_000_000, 1 << 20, 25_000)
    fast = rtnl.attributes(rtnl.attributes(fast_request.body, rtnl.TCMSG.size)[rtnl.TCA_OPTIONS],
                           0)
    assert rtnl.U64.unpack(fast[rtnl.TCA_TBF_RATE64]) == (5_000_000_000,)
    assert rtnl.TBF_RATE.unpack_from(fast[rtnl.TCA_TBF_PARMS]) == (0xFFFFFFFF,)
    ingress = decoded(rtnl.ingress_add(7))
    assert (ingress["handle"], ingress["parent"],  # type: ignore[index]
            ingress.get_attr("TCA_KIND")) == (0xFFFF0000, rtnl.TC_H_INGRESS, "ingress")  # type: ignore[attr-defined]
    assert [(decoded(r)["handle"], decoded(r)["parent"])  # type: ignore[index]
            for r in (rtnl.qdisc_delete(7), rtnl.qdisc_delete(7, ingress=True))] == [
        (0x10000, rtnl.TC_H_ROOT), (0xFFFF0000, rtnl.TC_H_INGRESS)]
    redirect = rtnl.redirect_filter(7, 12)
    assert (redirect.kind, redirect.flags) == (rtnl.RTM_NEWTFILTER,
                                               rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL)
    u32 = decoded(redirect)
    assert (u32["parent"], u32["info"], u32.get_attr("TCA_KIND")) == (  # type: ignore[index]
        0xFFFF0000, 1 << 16 | socket.htons(3), "u32")  # type: ignore[attr-defined]
    options = u32.get_attr("TCA_OPTIONS")  # type: ignore[attr-defined]
    assert options.get_attr("TCA_U32_CLASSID") == 0x10000
    selector = options.get_attr("TCA_U32_SEL")
    assert (selector["flags"], selector["nkeys"]) == (1, 1)
    action = options.get_attr("TCA_U32_ACT").get_attr("TCA_ACT_PRIO_1")
    assert action.get_attr("TCA_ACT_KIND") == "mirred"
    mirred = action.get_attr("TCA_ACT_OPTIONS").get_attr("TCA_MIRRED_PARMS")
    assert (mirred["action"], mirred["eaction"], mirred["ifindex"]) == (4, 1, 12)
