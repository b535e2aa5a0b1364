"""Ports published on ``[::1]``: a small userland proxy, as Docker's docker-proxy (issue 20).

Design note. Every other published port is a DNAT rule (``agent/nftrules.py``), but one on
``::1`` cannot be: the container's answer, de-NAT'd to ``::1``, arrives on the bridge and IPv6
has no ``route_localnet`` to take it. So the agent listens on ``[::1]:HOST_PORT`` in its host's
namespace itself and relays to ``[container IPv6]:CONTAINER_PORT``: TCP connection by
connection (a connect per accepted client, bytes pumped both ways until either side closes),
UDP flow by flow (one connected socket per client address, its answers sent back to that client,
forgotten after :data:`UDP_IDLE` seconds of silence). The container sees the bridge's IPv6
gateway as the client, as behind docker-proxy.

One asyncio loop on a thread of its own holds every listener. :meth:`PortProxy.update` takes the
whole wanted set (:func:`wanted_proxies`, pure, from the desired state: a port exists while its
container is desired here with an IPv6 address, as its DNAT rules would) and opens what is new
and closes what went, with its open connections and flows: nothing outlives its container.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from dataclasses import dataclass

from agent.desired import DesiredState
from agent.modes import MODES

log = logging.getLogger(__name__)

LOOPBACK6 = "::1"
UDP_IDLE = 60.0  # seconds a UDP flow may stay silent before its upstream socket is closed
CONNECT_TIMEOUT = 5.0
CHUNK = 65536


@dataclass(frozen=True)
class ProxySpec:
    """``[::1]:host_port/protocol`` relayed to ``[target]:target_port``."""

    container: str
    protocol: str  # tcp | udp
    host_port: int
    target: str  # the container's IPv6 address
    target_port: int


def wanted_proxies(desired: DesiredState) -> set[ProxySpec]:
    """The proxies this host runs: each ``[::1]`` port of a bridged container of a network
    this host has (not an internal one), with an IPv6 address to relay to (pure)."""
    wanted = set()
    for ctr in desired.containers.values():
        network = MODES[ctr.mode].bridge_network(ctr)
        net = desired.networks.get(network) if network is not None else None
        if net is None or net.internal or not ctr.ip6:  # (internal: no port is published)
            continue
        for port in ctr.ports:
            if port.host_ip == LOOPBACK6:
                wanted.add(ProxySpec(ctr.name, port.protocol, port.host_port, ctr.ip6,
                                     port.container_port))
    return wanted


class PortProxy:
    """The proxies' loop on a thread of its own (see the module note)."""

    def __init__(self, address: str = LOOPBACK6) -> None:
        self.address = address
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="portproxy", daemon=True)
        self.listeners: dict[ProxySpec, _Listener] = {}
        self.latest: set[ProxySpec] = set()
        self.latest_lock = threading.Lock()
        self.updating: asyncio.Lock | None = None
        self.ready = threading.Event()

    def start(self) -> PortProxy:
        self.thread.start()
        self.ready.wait()
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.updating = asyncio.Lock()
        self.ready.set()
        self.loop.run_forever()

    def update(self, wanted: set[ProxySpec], wait: bool = False) -> None:
        """Run exactly ``wanted`` from now on. Updates may overlap: each applies the latest."""
        with self.latest_lock:
            self.latest = set(wanted)
        future = asyncio.run_coroutine_threadsafe(self._update(), self.loop)
        if wait:
            future.result(timeout=10)

    def listening(self) -> set[ProxySpec]:
        """The proxies that listen now (a port another process holds is not among them)."""
        return set(self.listeners)

    async def _update(self) -> None:
        assert self.updating is not None
        async with self.updating:
            with self.latest_lock:
                wanted = self.latest
            for spec in [s for s in self.listeners if s not in wanted]:
                self.listeners.pop(spec).close()
            for spec in sorted(wanted - set(self.listeners), key=lambda s: s.host_port):
                try:
                    self.listeners[spec] = await _Listener.open(self.address, spec)
                except OSError as e:
                    log.warning("port proxy: could not listen on [%s]:%d/%s for %s: %s",
                                self.address, spec.host_port, spec.protocol, spec.container, e)

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self.update(set(), wait=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class _Listener:
    """One listening port and what it relays now (connections, flows)."""

    def __init__(self, spec: ProxySpec) -> None:
        self.spec = spec
        self.server: asyncio.Server | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.flows: dict[tuple[str, int], _UdpFlow] = {}

    @classmethod
    async def open(cls, address: str, spec: ProxySpec) -> _Listener:
        listener = cls(spec)
        loop = asyncio.get_running_loop()
        if spec.protocol == "tcp":
            listener.server = await asyncio.start_server(listener._serve_tcp, address,
                                                         spec.host_port, reuse_address=True)
        else:
            listener.transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpFront(listener), local_addr=(address, spec.host_port),
                family=socket.AF_INET6)
        return listener

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(self.spec.target, self.spec.target_port),
                CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            writer.close()  # the client sees the connection end, as behind docker-proxy
            self.writers.discard(writer)
            return
        self.writers.add(up_writer)
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
                self.writers.discard(w)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.transport is not None:
            self.transport.close()
        for writer in list(self.writers):
            writer.close()
        for flow in list(self.flows.values()):
            flow.close()
        self.flows.clear()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then half-close the other side."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, ConnectionError):
        writer.close()


class _UdpFront(asyncio.DatagramProtocol):
    """The ``[::1]`` side of a UDP proxy: each client address gets its own upstream flow."""

    def __init__(self, listener: _Listener) -> None:
        self.listener = listener

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        key = (addr[0], addr[1])
        flow = self.listener.flows.get(key)
        if flow is None:
            flow = self.listener.flows[key] = _UdpFlow(self.listener, key)
            task = asyncio.get_running_loop().create_task(flow.open())
            self.listener.tasks.add(task)
            task.add_done_callback(self.listener.tasks.discard)
        flow.send(data)


class _UdpFlow(asyncio.DatagramProtocol):
    """One client's flow: a socket connected to the container; its answers go back to the
    client through the listening socket; closed after UDP_IDLE seconds of silence."""

    def __init__(self, listener: _Listener, client: tuple[str, int]) -> None:
        self.listener, self.client = listener, client
        self.transport: asyncio.DatagramTransport | None = None
        self.queued: list[bytes] = []
        self.idle: asyncio.TimerHandle | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.transport, _ = await loop.create_datagram_endpoint(
                lambda: self, remote_addr=(self.listener.spec.target,
                                           self.listener.spec.target_port),
                family=socket.AF_INET6)
        except OSError:
            self.close()
            return
        for data in self.queued:
            self.transport.sendto(data)
        self.queued.clear()
        self._touch()

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.queued.append(data)
        else:
            self.transport.sendto(data)
            self._touch()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        front = self.listener.transport
        if front is not None:
            front.sendto(data, self.client)
        self._touch()

    def _touch(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(UDP_IDLE, self.close)

    def close(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        if self.transport is not None:
            self.transport.close()
        if self.listener.flows.get(self.client) is self:
            del self.listener.flows[self.client]
