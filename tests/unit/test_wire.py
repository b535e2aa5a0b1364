"""The CLI's gRPC (``sdnctl.api.wire``) and its HPACK (``sdnctl.api.hpackcodec``) against the
real thing: grpcio's server, and the ``hpack`` package's encoder and decoder.

The server is grpcio with generic handlers on raw bytes, so each test sets exactly what the
server does (messages of a size, an error with details, a slow answer); the controller's own
service is called through a descriptor-built :class:`wire.Stub` at the end.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import hpack
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from sdnctl.api import hpackcodec, pki, wire
from sdnctl.api.client import Client
from sdnctl.api.tlsfiles import TlsFiles
from sdnctl.controller.server import create_server
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.v1 import sdnctl_pb2 as pb

SERVICE = "test.Wire"
TIMEOUT = 10.0


def _same(x: bytes) -> bytes:
    return x


def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    """b"echo:..." echoes; b"fail:CODE:details" fails; b"sleep:S" answers after S seconds."""
    verb, _, rest = request.partition(b":")
    if verb == b"fail":
        code, _, details = rest.partition(b":")
        context.abort(grpc.StatusCode[code.decode()], details.decode())
    if verb == b"sleep":
        time.sleep(float(rest))
    if verb == b"none":
        return b""
    return rest


def server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    """b"COUNT:SIZE[:fail|:hang]": COUNT messages of SIZE bytes (byte i % 251), then OK,
    INTERNAL, or nothing until the call is cancelled."""
    count, size, *then = request.split(b":")
    for i in range(int(count)):
        yield bytes([i % 251]) * int(size)
    if then == [b"hang"]:
        done = threading.Event()
        context.add_callback(done.set)
        done.wait(30)
    elif then:
        context.abort(grpc.StatusCode.INTERNAL, "failed after the messages")


def client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    """The number of messages and bytes received, b"N:BYTES"."""
    count = total = 0
    for message in requests:
        count += 1
        total += len(message)
    return f"{count}:{total}".encode()


HANDLERS = grpc.method_handlers_generic_handler(SERVICE, {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "Stream": grpc.unary_stream_rpc_method_handler(server_stream),
    "Upload": grpc.stream_unary_rpc_method_handler(client_stream),
})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    srv.add_generic_rpc_handlers((HANDLERS,))
    address = f"unix:{tmp_path / 'w.sock'}"
    srv.add_insecure_port(address)
    srv.start()
    yield address
    srv.stop(0).wait()


def calls(channel: wire.Channel) -> tuple[Any, Any, Any]:
    return (channel.unary_unary(f"/{SERVICE}/Unary", _same, _same),
            channel.unary_stream(f"/{SERVICE}/Stream", _same, _same),
            channel.stream_unary(f"/{SERVICE}/Upload", _same, _same))


# -- calls ------------------------------------------------------------------------------------


def test_unary_calls_answer_and_errors_carry_code_and_details(server: str) -> None:
    channel = wire.Channel(server)
    call, _, _ = calls(channel)
    assert call(b"echo:hello", timeout=TIMEOUT) == b"hello"
    assert call(b"none", timeout=TIMEOUT) == b""  # an empty message is one message
    details = "name 'bad é' is 100% wrong\nsecond line"  # grpc percent-encodes these
    with pytest.raises(wire.RpcError) as info:
        call(f"fail:INVALID_ARGUMENT:{details}".encode(), timeout=TIMEOUT)
    assert info.value.code() is wire.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == details
    with pytest.raises(wire.RpcError) as info:
        channel.unary_unary(f"/{SERVICE}/Nope", _same, _same)(b"", timeout=TIMEOUT)
    assert info.value.code() is wire.StatusCode.UNIMPLEMENTED
    assert call(b"echo:still one connection", timeout=TIMEOUT) == b"still one connection"
    # A future: the request goes out at once, the caller works, then takes the answer.
    started = time.monotonic()
    pending = call.future(b"sleep:0.3", timeout=TIMEOUT)
    assert time.monotonic() - started < 0.2  # (the server is still sleeping)
    assert call(b"echo:meanwhile", timeout=TIMEOUT) == b"meanwhile"
    assert pending.result() == b"0.3" and time.monotonic() - started >= 0.3
    with pytest.raises(wire.RpcError) as info:
        call.future(b"fail:NOT_FOUND:gone", timeout=TIMEOUT).result()
    assert info.value.code() is wire.StatusCode.NOT_FOUND
    channel.close()


def test_big_messages_both_ways_past_every_window(server: str) -> None:
    """8 MB down in 2 messages and 8 MB up in 4: many times HTTP/2's initial 64 KiB windows
    and its 16 KiB frames, so both sides' flow control and framing are exercised."""
    channel = wire.Channel(server)
    call, stream, upload = calls(channel)
    got = list(stream(b"2:4194304", timeout=TIMEOUT))
    assert [len(m) for m in got] == [4194304, 4194304]
    assert got[1] == bytes([1]) * 4194304
    assert upload((bytes(2097152) for _ in range(4)), timeout=TIMEOUT) == b"4:8388608"
    assert call(b"echo:" + bytes(300000), timeout=TIMEOUT) == bytes(300000)
    channel.close()


def test_a_stream_yields_messages_then_its_status(server: str) -> None:
    _, stream, upload = calls(wire.Channel(server))
    assert list(stream(b"0:10", timeout=TIMEOUT)) == []
    assert [len(m) for m in stream(b"1000:3", timeout=TIMEOUT)] == [3] * 1000
    got = []
    with pytest.raises(wire.RpcError) as info:
        for message in stream(b"3:5:fail", timeout=TIMEOUT):
            got.append(message)
    assert len(got) == 3
    assert info.value.code() is wire.StatusCode.INTERNAL
    assert info.value.details() == "failed after the messages"
    assert upload(iter(()), timeout=TIMEOUT) == b"0:0"


def test_deadlines_and_cancel(server: str) -> None:
    channel = wire.Channel(server)
    call, stream, _ = calls(channel)
    started = time.monotonic()
    with pytest.raises(wire.RpcError) as info:
        call(b"sleep:5", timeout=0.3)
    assert info.value.code() is wire.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    responses = stream(b"100000:10", timeout=TIMEOUT)
    assert next(responses) == bytes(10)
    responses.cancel()
    with pytest.raises(wire.RpcError) as info:
        list(responses)
    assert info.value.code() is wire.StatusCode.CANCELLED
    assert call(b"echo:after", timeout=TIMEOUT) == b"after"  # the connection lives on


def test_a_blocked_stream_wakes_when_cancelled_or_closed_by_another_thread(
        server: str) -> None:
    """A Watch-like stream with no deadline, its reader blocked on the socket: a cancel (the
    agent stopping) or closing the channel ends the iteration at once."""
    for how in ("cancel", "close"):
        channel = wire.Channel(server)
        responses = channel.unary_stream(f"/{SERVICE}/Stream", _same, _same)(b"1:10:hang")
        assert next(responses) == bytes(10)
        ended: list[BaseException] = []

        def read(stream: Any = responses, into: list[BaseException] = ended) -> None:
            try:
                list(stream)
            except wire.RpcError as e:
                into.append(e)

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.2)  # (the reader is blocked: nothing more comes on its own)
        assert reader.is_alive() and not ended
        started = time.monotonic()
        if how == "cancel":
            responses.cancel()
        else:
            channel.close()
        reader.join(5)
        assert not reader.is_alive() and time.monotonic() - started < 1, how
        assert isinstance(ended[0], wire.RpcError)
        assert ended[0].code() is wire.StatusCode.CANCELLED, how


def test_a_connection_past_descriptor_1023(server: str) -> None:
    """An agent holds a netlink socket per container namespace: its channel's descriptors may
    be past select()'s 1023, which poll() has no limit for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    held = []
    try:
        while len(held) < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        channel = wire.Channel(server)
        call, stream, _ = calls(channel)
        assert call(b"echo:high", timeout=TIMEOUT) == b"high"
        assert len(list(stream(b"3:5", timeout=TIMEOUT))) == 3
        channel.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_threads_share_a_channel(server: str) -> None:
    channel = wire.Channel(server)
    call, stream, _ = calls(channel)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(100):
                text = f"echo:{n}-{i}".encode()
                assert call(text, timeout=TIMEOUT) == text[5:]
            assert sum(len(m) for m in stream(b"50:1000", timeout=TIMEOUT)) == 50000
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_no_server_is_unavailable_and_a_restarted_one_is_dialled_again(tmp_path: Path) -> None:
    address = f"unix:{tmp_path / 'later.sock'}"
    channel = wire.Channel(address)
    call, _, _ = calls(channel)
    with pytest.raises(wire.RpcError) as info:
        call(b"echo:x", timeout=TIMEOUT)
    assert info.value.code() is wire.StatusCode.UNAVAILABLE
    for attempt in range(2):
        srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        srv.add_generic_rpc_handlers((HANDLERS,))
        srv.add_insecure_port(address)
        srv.start()
        assert call(f"echo:{attempt}".encode(), timeout=TIMEOUT) == str(attempt).encode()
        srv.stop(0).wait()
        with pytest.raises(wire.RpcError) as info:
            call(b"echo:gone", timeout=TIMEOUT)
        assert info.value.code() is wire.StatusCode.UNAVAILABLE


def test_mutual_tls_with_the_name_checked(tmp_path: Path) -> None:
    pki.init(tmp_path)
    pki.issue(tmp_path, "user", "alice", role="admin")
    store = MemoryStore()
    running = create_server("tcp:127.0.0.1:0", store, tls=TlsFiles.from_dir(tmp_path,
                                                                            "controller"),
                            crl=str(tmp_path / "crl.pem"), sweep_interval=0)
    try:
        client = Client(f"tcp:{running.address}", TlsFiles.from_dir(tmp_path, "user", "alice"))
        assert client.healthy(timeout=TIMEOUT)
        client.api.CreateHost(pb.CreateHostRequest(host=pb.Host(name="h1")), timeout=TIMEOUT)
        assert [h.name for h in client.api.ListHosts(pb.ListRequest(), timeout=TIMEOUT).hosts] \
            == ["h1"]
        client.close()
        other = tmp_path / "other"
        pki.init(other)  # a CA the controller's certificate is not of
        pki.issue(other, "user", "mallory", role="admin")
        stranger = wire.Channel(f"tcp:{running.address}",
                                TlsFiles.from_dir(other, "user", "mallory"))
        check = wire.Stub(stranger, health_pb2.DESCRIPTOR.services_by_name["Health"])
        with pytest.raises(wire.RpcError) as info:
            check.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)  # type: ignore
        assert info.value.code() is wire.StatusCode.UNAVAILABLE
        assert "certificate verify failed" in info.value.details()
    finally:
        running.stop(grace=0)


def test_the_controllers_service_through_a_descriptor_stub(tmp_path: Path) -> None:
    store = MemoryStore()
    running = create_server(f"unix:{tmp_path / 'c.sock'}", store, sweep_interval=0)
    try:
        client = Client(running.address)
        api = client.api
        api.CreateHost(pb.CreateHostRequest(host=pb.Host(name="h1")), timeout=TIMEOUT)
        api.CreateNetwork(pb.CreateNetworkRequest(network=pb.Network(
            name="front", subnet="10.88.0.0/16")), timeout=TIMEOUT)
        made = api.CreateContainer(pb.CreateContainerRequest(container=pb.Container(
            name="web", host="h1", network="front")), timeout=TIMEOUT)
        assert made.ip.startswith("10.88.")
        assert api.GetContainer(pb.GetRequest(name="web"), timeout=TIMEOUT).ip == made.ip
        with pytest.raises(wire.RpcError) as info:
            api.CreateNetwork(pb.CreateNetworkRequest(network=pb.Network(
                name="Bad", subnet="10.89.0.0/16")), timeout=TIMEOUT)
        assert info.value.code() is wire.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith("network.name:")
        events = list(api.Events(pb.EventsRequest(), timeout=TIMEOUT))
        assert [e.method.rsplit("/", 1)[1] for e in events][-2:] == ["CreateContainer",
                                                                     "CreateNetwork"]
        client.close()
    finally:
        running.stop(grace=0)


# -- HPACK --------------------------------------------------------------------------------------

header = st.tuples(st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1,
                           max_size=12),
                   st.text(max_size=40))


@settings(max_examples=60, deadline=None)
@given(blocks=st.lists(st.lists(header, max_size=8), min_size=1, max_size=6),
       table_size=st.sampled_from([0, 64, 256, 4096]), huffman=st.booleans())
def test_our_decoder_reads_what_hpack_encodes(blocks: list[list[tuple[str, str]]],
                                              table_size: int, huffman: bool) -> None:
    """Blocks in a row share the dynamic table (indexed, literals, evictions, size updates)."""
    encoder = hpack.Encoder()
    encoder.header_table_size = table_size
    decoder = hpackcodec.Decoder()
    for block in blocks:
        data = encoder.encode(block, huffman=huffman)
        assert decoder.decode(data) == block


def test_rfc7541_appendix_c6_responses_with_huffman_and_eviction() -> None:
    decoder = hpackcodec.Decoder(max_size=256)
    first = bytes.fromhex("488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d"
                          "1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3")
    assert decoder.decode(first) == [(":status", "302"), ("cache-control", "private"),
                                     ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                                     ("location", "https://www.example.com")]
    second = bytes.fromhex("4883640effc1c0bf")
    assert decoder.decode(second)[0] == (":status", "307")
    assert decoder.size == 222  # RFC 7541 C.6.2: ":status: 302" was evicted


def test_our_encoding_reads_back_with_hpack() -> None:
    headers = [(":path", "/sdnctl.v1.Controller/CreateContainer"), ("grpc-timeout", "5000m"),
               ("user-agent", "x" * 300)]
    assert [tuple(h) for h in hpack.Decoder().decode(hpackcodec.encode(headers))] == headers


def test_bad_huffman_is_refused() -> None:
    with pytest.raises(hpackcodec.HpackError):
        hpackcodec.huffman_decode(b"\xff\xff\xff\xff")  # EOS
    with pytest.raises(hpackcodec.HpackError):
        hpackcodec.huffman_decode(b"\x00")  # padding of zeros
    assert hpackcodec.huffman_decode(bytes.fromhex("f1e3c2e5f23a6ba0ab90f4ff")) \
        == b"www.example.com"  # RFC 7541 C.4.1
