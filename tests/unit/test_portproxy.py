"""The agent's userland proxy for ports on ``[::1]`` (issue 20): which ports it serves (pure),
and real TCP and UDP relayed over loopback to a stand-in container, then nothing left once the
port is no longer wanted. (The namespace test relays to a real container.)"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from agent.desired import DesiredContainer, DesiredNetwork, DesiredState
from agent.portproxy import PortProxy, ProxySpec, wanted_proxies
from sdnctl.api.model import PortMapping


def _net(name: str, internal: bool = False) -> DesiredNetwork:
    return DesiredNetwork(name, "bridge", "10.1.0.0/24", "10.1.0.1", 24, 1500, True,
                          internal=internal, subnet6="fd00:1::/64", gateway6="fd00:1::1")


def test_only_loopback6_ports_of_containers_with_ipv6_here_are_proxied() -> None:
    ports = (PortMapping("::1", 8080, 80), PortMapping("::1", 5353, 53, "udp"),
             PortMapping("", 8081, 80), PortMapping("::", 8082, 80))
    desired = DesiredState(networks={"front": _net("front"), "closed": _net("closed", True)})
    for name, network, ip6 in (("web", "front", "fd00:1::2"), ("v4", "front", ""),
                               ("in", "closed", "fd00:1::3"), ("away", "other", "fd00:1::4")):
        desired.containers[name] = DesiredContainer(name, network, (), ip6=ip6, ports=ports)
    assert wanted_proxies(desired) == {ProxySpec("web", "tcp", 8080, "fd00:1::2", 80),
                                       ProxySpec("web", "udp", 5353, "fd00:1::2", 53)}


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET6, kind) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def backends() -> Iterator[tuple[int, int]]:
    """A TCP server that answers "got <data>" and a UDP one that echoes, on [::1]."""
    tcp = socket.create_server(("::1", 0), family=socket.AF_INET6)
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.bind(("::1", 0))

    def serve_tcp() -> None:
        while True:
            try:
                conn, _ = tcp.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"got " + conn.recv(100))

    def serve_udp() -> None:
        while True:
            try:
                data, addr = udp.recvfrom(100)
            except OSError:
                return
            udp.sendto(b"echo " + data, addr)

    for target in (serve_tcp, serve_udp):
        threading.Thread(target=target, daemon=True).start()
    try:
        yield tcp.getsockname()[1], udp.getsockname()[1]
    finally:
        tcp.close()
        udp.close()


def test_tcp_and_udp_are_relayed_and_a_port_no_longer_wanted_is_closed(
        backends: tuple[int, int]) -> None:
    tcp_port, udp_port = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
    specs = {ProxySpec("c", "tcp", tcp_port, "::1", backends[0]),
             ProxySpec("c", "udp", udp_port, "::1", backends[1])}
    proxy = PortProxy("::1").start()
    try:
        proxy.update(specs, wait=True)
        assert proxy.listening() == specs
        with socket.create_connection(("::1", tcp_port), timeout=5) as c:
            c.sendall(b"hello")
            assert c.recv(100) == b"got hello"
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as u:
            u.settimeout(5)
            u.sendto(b"ping", ("::1", udp_port))
            assert u.recvfrom(100)[0] == b"echo ping"
        proxy.update(set(), wait=True)
        assert proxy.listening() == set()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("::1", tcp_port), timeout=5)
    finally:
        proxy.stop()
    assert not proxy.thread.is_alive()
