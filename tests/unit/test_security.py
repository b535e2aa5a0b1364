"""Transport security and authorization, through a real controller on loopback TCP (mutual TLS)
and a unix socket, with certificates made by ``sdnctl.api.pki`` in a temporary directory.

Refused at the TLS handshake (by the controller's TLS terminator, sdnctl.controller.tlsfront): a
plaintext client, a certificate of another CA, an expired one, a revoked one; such a connection
never reaches the gRPC server (no audit record, no connection to its socket). A certificate revoked
while its connection is open is cut off when the CRL is reloaded. Then the authorization table,
method by method and role by role.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from apitest import TIMEOUT, eventually, keyspace, unchanged
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from sdnctl.api import pki, wire
from sdnctl.api.errors import CommandError
from sdnctl.api.grpcchannel import open_channel
from sdnctl.api.pki import Identity
from sdnctl.api.tlsfiles import TLS_ENV, TlsFiles
from sdnctl.controller import auth, tlsfront
from sdnctl.controller.server import ListenError, RunningServer, create_server, main
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

ROLES = ("admin", "operator", "viewer")


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    pki.init(d)
    for role in ROLES:
        pki.issue(d, "user", role, role=role)
    for host in ("ha", "hb"):
        pki.issue(d, "agent", host)
    return d


@pytest.fixture
def secure(pki_dir: Path, tmp_path: Path) -> Iterator[tuple[RunningServer, MemoryStore]]:
    """A controller on a unix socket and on 127.0.0.1 (mutual TLS, with the CRL); hosts ha, hb,
    a network and a container on each host."""
    store = MemoryStore()
    running = create_server([f"unix:{tmp_path / 'c.sock'}", "tcp:127.0.0.1:0"], store,
                            tls=TlsFiles.from_dir(pki_dir, "controller"),
                            crl=str(pki_dir / "crl.pem"), sweep_interval=0)
    with grpc.insecure_channel(running.address) as channel:
        ctl = pb_grpc.ControllerStub(channel)
        for host in ("ha", "hb"):
            ctl.CreateHost(pb.CreateHostRequest(host=pb.Host(name=host)), timeout=TIMEOUT)
        ctl.CreateNetwork(pb.CreateNetworkRequest(
            network=pb.Network(name="front", subnet="10.88.0.0/16")), timeout=TIMEOUT)
        for host in ("ha", "hb"):
            ctl.CreateContainer(pb.CreateContainerRequest(container=pb.Container(
                name=f"c-{host}", host=host, network="front")), timeout=TIMEOUT)
    yield running, store
    running.stop(grace=0)


def tcp(running: RunningServer) -> str:
    return running.addresses[1]


def channel_as(running: RunningServer, pki_dir: Path, kind: str, name: str) -> grpc.Channel:
    return open_channel(tcp(running), TlsFiles.from_dir(pki_dir, kind, name))


def health(channel: grpc.Channel) -> Any:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                     timeout=TIMEOUT)


def refused_code(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        health(channel)
    return info.value.code()  # type: ignore[attr-defined]


def assert_refused_at_the_handshake(running: RunningServer, channel: grpc.Channel) -> None:
    """The call fails UNAVAILABLE; the terminator refused a handshake; nothing got past it: no
    connection to the gRPC server was made and no call was audited (every refusal by the
    interceptor is), so no interceptor and no handler ran."""
    front = running.front
    assert front is not None
    before, handshakes, refused = running.audit.since(0), front.handshakes, front.refused
    assert refused_code(channel) == grpc.StatusCode.UNAVAILABLE
    eventually(lambda: front.refused > refused)  # the client may hear of it first
    assert front.handshakes == handshakes
    assert running.audit.since(0) == before


# -- the handshake ------------------------------------------------------------------------------


def test_a_client_with_a_certificate_of_the_ca_is_served(secure: Any, pki_dir: Path) -> None:
    running, _ = secure
    with channel_as(running, pki_dir, "user", "viewer") as channel:
        assert health(channel).status == health_pb2.HealthCheckResponse.SERVING
        hosts = pb_grpc.ControllerStub(channel).ListHosts(pb.ListRequest(), timeout=TIMEOUT)
        assert [h.name for h in hosts.hosts] == ["ha", "hb"]


def test_a_plaintext_client_is_refused_at_the_handshake(secure: Any) -> None:
    running, _ = secure
    with grpc.insecure_channel(tcp(running)) as channel:
        assert_refused_at_the_handshake(running, channel)


def test_a_certificate_of_another_ca_is_refused_at_the_handshake(secure: Any, pki_dir: Path,
                                                                  tmp_path: Path) -> None:
    running, _ = secure
    other = tmp_path / "other-pki"
    pki.init(other)
    pki.issue(other, "user", "admin", role="admin")
    cert, key = pki.cert_path(other, "user", "admin")
    # It trusts our controller (our CA) but presents a certificate of its own CA.
    with open_channel(tcp(running), TlsFiles(str(cert), str(key),
                                             str(pki_dir / "ca.pem"))) as channel:
        assert_refused_at_the_handshake(running, channel)


def test_an_expired_certificate_is_refused_at_the_handshake(secure: Any, pki_dir: Path) -> None:
    running, _ = secure
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    pki.issue(pki_dir, "user", "old", role="admin", days=1, not_before=long_ago)
    with channel_as(running, pki_dir, "user", "old") as channel:
        assert_refused_at_the_handshake(running, channel)


def test_a_revoked_certificate_is_refused_at_the_handshake(secure: Any, pki_dir: Path) -> None:
    running, _ = secure
    pki.issue(pki_dir, "user", "mallory", role="admin")
    with channel_as(running, pki_dir, "user", "mallory") as channel:
        assert health(channel).status == health_pb2.HealthCheckResponse.SERVING
    (serial,) = pki.revoke(pki_dir, "mallory")
    running.revocations.reload()  # what SIGHUP does
    with channel_as(running, pki_dir, "user", "mallory") as channel:
        assert_refused_at_the_handshake(running, channel)
    with channel_as(running, pki_dir, "user", "viewer") as channel:  # the others still pass
        assert health(channel).status == health_pb2.HealthCheckResponse.SERVING
    assert serial in pki.revoked_serials(pki_dir)
    assert any(e["serial"] == serial and e["revoked"] for e in pki.listing(pki_dir))


def test_a_certificate_revoked_while_connected_is_cut_off(secure: Any, pki_dir: Path) -> None:
    """Revoked while it follows the event stream: once the controller notices the new CRL file
    (no SIGHUP here), its connection is cut, its stream ends UNAVAILABLE, and it cannot come
    back; a connection of another certificate, following the same stream, goes on."""
    running, store = secure
    pki.issue(pki_dir, "user", "trudy", role="admin")
    with channel_as(running, pki_dir, "user", "trudy") as trudy, \
            channel_as(running, pki_dir, "user", "viewer") as viewer:
        follow = pb.EventsRequest(follow=True)
        cut = pb_grpc.ControllerStub(trudy).Events(follow, timeout=60)
        kept = pb_grpc.ControllerStub(viewer).Events(follow, timeout=60)
        seen = [next(cut), next(kept)]  # both streams are open (the fixture's records)
        assert all(e.identity == "local" for e in seen)
        pki.revoke(pki_dir, "trudy")
        with pytest.raises(grpc.RpcError) as info:
            for _ in cut:
                pass
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert running.front.cut_off == 1
        ctl = pb_grpc.ControllerStub(trudy)
        with unchanged(store), pytest.raises(grpc.RpcError) as info:
            ctl.DeleteContainer(pb.DeleteRequest(name="c-ha"), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        # The viewer's stream is still live: it hears of a call made now.
        with grpc.insecure_channel(running.address) as local:
            pb_grpc.ControllerStub(local).CreateNetwork(pb.CreateNetworkRequest(
                network=pb.Network(name="later", subnet="10.89.0.0/16")), timeout=TIMEOUT)
        assert any(e.method.endswith("/CreateNetwork") and "later" in e.request for e in kept)
        kept.cancel()
    assert not [r for r in running.audit.since(0) if r.identity.startswith("user:trudy")]


def test_a_connection_is_cut_when_its_certificate_expires(secure: Any, pki_dir: Path) -> None:
    """A certificate valid for two more seconds: served now, its open stream ends UNAVAILABLE
    when it expires, and a new connection with it is refused at the handshake."""
    running, _ = secure
    soon = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1, seconds=-2)
    pki.issue(pki_dir, "user", "brief", role="viewer", days=1, not_before=soon)
    with channel_as(running, pki_dir, "user", "brief") as channel:
        stream = pb_grpc.ControllerStub(channel).Events(pb.EventsRequest(follow=True),
                                                        timeout=60)
        assert next(stream).identity == "local"  # served while valid
        with pytest.raises(grpc.RpcError) as info:
            for _ in stream:
                pass
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert running.front.expired == 1
    with channel_as(running, pki_dir, "user", "brief") as channel:
        assert_refused_at_the_handshake(running, channel)


def test_silent_connections_tie_up_a_bounded_number_of_handshakes(secure: Any,
                                                                  pki_dir: Path) -> None:
    """Connections that never speak hold handshake slots; beyond the cap a new connection is
    closed at once, and once they go a client is served again."""
    running, _ = secure
    front = running.front
    host, _, port = tcp(running).rpartition(":")
    front.max_handshakes = 2
    try:
        silent = [socket.create_connection((host, int(port))) for _ in range(2)]
        eventually(lambda: front.handshaking == 2)
        with channel_as(running, pki_dir, "user", "viewer") as channel:
            assert refused_code(channel) == grpc.StatusCode.UNAVAILABLE
        for sock in silent:
            sock.close()
        eventually(lambda: front.handshaking == 0)
        with channel_as(running, pki_dir, "user", "viewer") as channel:
            assert health(channel).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        front.max_handshakes = tlsfront.MAX_HANDSHAKES


def test_the_crl_is_reloaded_on_sighup_and_a_forged_one_is_ignored(pki_dir: Path,
                                                                   tmp_path: Path) -> None:
    crl = tmp_path / "crl.pem"
    crl.write_bytes((pki_dir / "crl.pem").read_bytes())
    revocations = pki.RevocationList(str(crl), (pki_dir / "ca.pem").read_bytes())
    pki.issue(pki_dir, "user", "eve", role="viewer")
    (serial,) = pki.revoke(pki_dir, "eve")
    assert not revocations.revoked(serial)
    crl.write_bytes((pki_dir / "crl.pem").read_bytes())
    revocations.reload()  # what SIGHUP does; a changed mtime does the same at the next call
    assert revocations.revoked(serial)
    other = tmp_path / "other"
    pki.init(other)
    crl.write_bytes((other / "crl.pem").read_bytes())  # signed by another CA, revokes nobody
    os.utime(crl, (time.time() + 5, time.time() + 5))
    assert revocations.revoked(serial), "a CRL of another CA must not un-revoke anybody"
    with pytest.raises(pki.PkiError):
        pki.RevocationList(str(crl), (pki_dir / "ca.pem").read_bytes())


# -- listeners ----------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["tcp:127.0.0.1:0", "0.0.0.0:0", "tcp:[::1]:0"])
def test_tcp_without_mutual_tls_is_refused(address: str) -> None:
    with pytest.raises(ListenError, match="mutual TLS"):
        create_server(address, MemoryStore(), sweep_interval=0)


def test_the_controller_exits_on_a_tcp_listener_without_tls(capsys: Any) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--store", "memory", "--listen", "tcp:0.0.0.0:0", "--audit-log", ""])
    assert info.value.code == 2
    assert "mutual TLS" in capsys.readouterr().err


def test_the_client_never_dials_tcp_in_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SDNCTL_TLS_CERT", "SDNCTL_TLS_KEY", "SDNCTL_TLS_CA"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(CommandError, match="client certificate"):
        open_channel("tcp:127.0.0.1:1")


def test_the_unix_socket_is_0600(secure: Any) -> None:
    running, _ = secure
    mode = os.stat(running.address.removeprefix("unix:")).st_mode & 0o777
    assert mode == 0o600
    # The gRPC server's socket behind the TLS terminator: only root gets past the handshake.
    assert os.stat(running.front.directory).st_mode & 0o777 == 0o700
    assert os.stat(running.front.backend).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("listen,dials", [
    ("tcp:[::1]:0", ["[::1]"]),
    ("tcp:0.0.0.0:0", ["127.0.0.1", "[::1]"]),  # a wildcard is dual-stack, as gRPC binds it
])
def test_tls_listeners_on_ipv6_and_wildcards(pki_dir: Path, listen: str,
                                             dials: list[str]) -> None:
    running = create_server(listen, MemoryStore(), tls=TlsFiles.from_dir(pki_dir, "controller"),
                            sweep_interval=0)
    directory = running.front.directory
    try:
        port = running.address.rsplit(":", 1)[1]
        for host in dials:
            with open_channel(f"{host}:{port}",
                              TlsFiles.from_dir(pki_dir, "user", "viewer")) as channel:
                assert health(channel).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.stop(grace=0)
    assert not os.path.exists(directory)  # the terminator cleans up after itself


# -- identities ---------------------------------------------------------------------------------


def test_identities_come_from_the_uri_san(pki_dir: Path) -> None:
    cert, _ = pki.cert_path(pki_dir, "user", "viewer")
    ident = pki.identity_of(pki.load_cert(cert.read_bytes()))
    assert (ident.kind, ident.name, ident.role) == ("user", "viewer", "viewer")  # type: ignore
    cert, _ = pki.cert_path(pki_dir, "agent", "ha")
    ident = pki.identity_of(pki.load_cert(cert.read_bytes()))
    assert (ident.kind, ident.name) == ("agent", "ha")  # type: ignore[union-attr]
    with pytest.raises(pki.PkiError):
        pki.issue(pki_dir, "user", "x", role="root")
    with pytest.raises(pki.PkiError):
        pki.issue(pki_dir, "agent", "Bad_Name")


# -- authorization: every method, every role ------------------------------------------------------

SERVICES = [
    pb.DESCRIPTOR.services_by_name["Controller"],
    pb.DESCRIPTOR.services_by_name["HostSync"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
]
METHODS = {f"/{s.full_name}/{m.name}": m for s in SERVICES for m in s.methods}
READS = {"GetHost", "WaitHost", "ListHosts", "GetNetwork", "ListNetworks", "GetContainer",
         "ListContainers", "GetIpam", "CheckIpam", "Events", "ListImages", "GetImage", "SaveImage",
         "GetEndpoints", "GetFlows", "GetPolicy", "ListPolicies"}
NETWORKS_AND_CONTAINERS = {"CreateNetwork", "UpdateNetwork", "DeleteNetwork", "CreateContainer",
                           "CreateContainers", "DeleteContainers",
                           "UpdateContainer", "DeleteContainer", "LoadImage", "RemoveImage",
                           "RecordImage",
                           "ValidateTopology", "CreatePolicy", "DeletePolicy"}
ANY_AGENT = {"FetchImage", "FetchBlob"}  # images are not per host
#: An agent's Docker plugin (issue 18) adopts or creates networks: they are not per host.
AGENT_NETWORKS = {"CreateNetwork", "GetNetwork", "ListNetworks"}
HEALTH = {"Check", "List", "Watch"}


def expected(identity: str, method: str) -> bool:
    """The table, written out again independently of auth.POLICY."""
    service, name = method.rsplit("/", 1)
    if service.endswith("Health"):
        return True
    if service.endswith("ServerReflection"):
        return identity in ROLES
    if service.endswith("HostSync"):
        return identity in ("admin", "agent-own") or \
            (identity.startswith("agent") and name in ANY_AGENT)
    if identity == "admin":
        return True
    if identity.startswith("agent") and name in AGENT_NETWORKS:
        return True
    if identity == "operator":
        return name in READS | NETWORKS_AND_CONTAINERS
    if identity == "viewer":
        return name in READS
    return False


IDENTITIES = {
    "admin": Identity("user", "admin", "admin"),
    "operator": Identity("user", "operator", "operator"),
    "viewer": Identity("user", "viewer", "viewer"),
    "agent-own": Identity("agent", "ha"),
    "agent-other": Identity("agent", "hb"),
}


def test_every_served_method_is_in_the_table() -> None:
    assert set(METHODS) == set(auth.POLICY), "a method without a rule (or a stale rule)"


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("who", sorted(IDENTITIES))
def test_the_table(method: str, who: str) -> None:
    request_class = message_factory.GetMessageClass(METHODS[method].input_type)
    request = request_class()
    host_field = METHODS[method].input_type.fields_by_name.get("host")
    if host_field is not None and host_field.type == host_field.TYPE_STRING:
        request = request_class(host="ha")
    verdict = auth.allowed(IDENTITIES[who], method, request)
    assert (verdict is None) == expected(who, method), verdict


def test_a_method_missing_from_the_table_is_denied_to_everybody() -> None:
    for identity in [*IDENTITIES.values(), pki.LOCAL]:
        assert auth.allowed(identity, "/sdnctl.v1.Controller/Shutdown", None) is not None
    assert auth.allowed(Identity("controller", ""), "/sdnctl.v1.Controller/ListHosts",
                        None) is not None


CALLS: dict[str, Any] = {
    "CreateHost": pb.CreateHostRequest(host=pb.Host(name="hx")),
    "GetHost": pb.GetRequest(name="ha"),
    "WaitHost": pb.WaitHostRequest(name="ha", timeout_ms=1),
    "ListHosts": pb.ListRequest(),
    "DeleteHost": pb.DeleteRequest(name="hb"),
    "CreateNetwork": pb.CreateNetworkRequest(network=pb.Network(name="n2",
                                                                subnet="10.89.0.0/16")),
    "GetNetwork": pb.GetRequest(name="front"),
    "ListNetworks": pb.ListRequest(),
    "DeleteNetwork": pb.DeleteRequest(name="front"),
    "UpdateNetwork": pb.UpdateNetworkRequest(network=pb.Network(name="front",
                                                                subnet="10.88.0.0/16")),
    "CreateContainer": pb.CreateContainerRequest(container=pb.Container(
        name="c2", host="ha", network="front")),
    "CreateContainers": pb.CreateContainersRequest(containers=[pb.Container(
        name="c3", host="ha", network="front")]),
    "GetContainer": pb.GetRequest(name="c-ha"),
    "ListContainers": pb.ListRequest(),
    "DeleteContainer": pb.DeleteRequest(name="c-hb"),
    "DeleteContainers": pb.DeleteContainersRequest(names=["c-hb"]),
    "UpdateContainer": pb.UpdateContainerRequest(container=pb.Container(
        name="c-ha", host="ha", network="none")),
    "GetIpam": pb.GetIpamRequest(),
    "CheckIpam": pb.GetIpamRequest(),
    "GcIpam": pb.GcIpamRequest(dry_run=True),
    "ValidateTopology": pb.ValidateTopologyRequest(containers=[pb.Container(
        name="c3", host="ha", network="front")]),
    "Events": pb.EventsRequest(),
    "GetEndpoints": pb.GetEndpointsRequest(),
    "GetFlows": pb.GetFlowsRequest(),
    "CreatePolicy": pb.CreatePolicyRequest(policy=pb.Policy(
        name="p1", network="front", ingress_isolated=True)),
    "GetPolicy": pb.GetRequest(name="nope"),
    "ListPolicies": pb.ListRequest(),
    "DeletePolicy": pb.DeleteRequest(name="nope"),
    "Register": pb.RegisterRequest(host="ha"),
    "Watch": pb.WatchRequest(host="ha"),
    "ReportStatus": pb.ReportStatusRequest(host="ha"),
    "LoadImage": pb.ImageChunk(data=b"not an archive"),
    "ListImages": pb.ListRequest(),
    "GetImage": pb.ImageRef(name="nope:1"),
    "RemoveImage": pb.ImageRef(name="nope:1"),
    "SaveImage": pb.ImageRef(name="nope:1"),
    "RecordImage": pb.RecordImageRequest(reference="not a reference"),
    "FetchImage": pb.ImageRef(name="nope:1"),
    "FetchBlob": pb.BlobRequest(digest="sha256:" + "0" * 64),
    "Attach": pb.AttachRequest(host="ha", container=pb.Container(
        name="cni-x", network="front", cni=pb.CniOwner(container_id="x", netns="/run/x"))),
    "Detach": pb.DetachRequest(host="ha", name="nope"),
}


@pytest.mark.parametrize("who", sorted(IDENTITIES))
def test_the_table_over_the_wire(secure: Any, pki_dir: Path, who: str) -> None:
    """Each Controller and HostSync method, called with this identity's certificate: refused
    with PERMISSION_DENIED (and nothing changed) exactly where the table says so."""
    running, store = secure
    ident = IDENTITIES[who]
    assert set(CALLS) == {m.rsplit("/", 1)[1] for m in METHODS
                          if "/sdnctl.v1." in m}
    with channel_as(running, pki_dir, ident.kind, ident.name) as channel:
        for method, request in CALLS.items():
            path = next(m for m in METHODS if m.endswith(f"v1.Controller/{method}")
                        or m.endswith(f"v1.HostSync/{method}"))
            streaming = METHODS[path].server_streaming
            upload = METHODS[path].client_streaming
            kind = channel.stream_unary if upload else \
                channel.unary_stream if streaming else channel.unary_unary
            call = kind(path, request_serializer=type(request).SerializeToString,
                        response_deserializer=lambda b: b)
            before = keyspace(store)
            try:
                result = call(iter([request]) if upload else request,
                              timeout=0.5 if streaming else TIMEOUT)
                if streaming:
                    next(iter(result))
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()  # type: ignore[attr-defined]
            if expected(who, path):
                assert code != grpc.StatusCode.PERMISSION_DENIED, (who, method)
            else:
                assert code == grpc.StatusCode.PERMISSION_DENIED, (who, method, code)
                assert keyspace(store) == before


# -- agents act only as their own host -------------------------------------------------------------


@pytest.mark.parametrize("transport", ["grpcio", "wire"])
def test_an_agent_cannot_act_as_another_host(secure: Any, pki_dir: Path, transport: str) -> None:
    """Over grpcio, and over the agents' own gRPC (``sdnctl.api.wire``, mutual TLS with the
    agent's certificate), as a real agent dials."""
    running, store = secure
    files = TlsFiles.from_dir(pki_dir, "agent", "ha")
    opened: Any = (open_channel(tcp(running), files) if transport == "grpcio" else
                   contextlib.closing(wire.open_channel(f"tcp:{tcp(running)}", files)))
    with opened as channel:
        sync: Any = (pb_grpc.HostSyncStub(channel) if transport == "grpcio" else
                     wire.Stub(channel, pb.DESCRIPTOR.services_by_name["HostSync"]))
        with unchanged(store):
            for call in (
                lambda: sync.Register(pb.RegisterRequest(host="hb"), timeout=TIMEOUT),
                lambda: next(iter(sync.Watch(pb.WatchRequest(host="hb"), timeout=TIMEOUT))),
                lambda: sync.ReportStatus(pb.ReportStatusRequest(host="hb", containers=[
                    pb.ContainerStatus(name="c-hb", state="running")]), timeout=TIMEOUT),
                # its own host, but another host's container
                lambda: sync.ReportStatus(pb.ReportStatusRequest(host="ha", containers=[
                    pb.ContainerStatus(name="c-hb", state="exited")]), timeout=TIMEOUT),
            ):
                with pytest.raises((grpc.RpcError, wire.RpcError)) as info:
                    call()
                assert info.value.code().name == "PERMISSION_DENIED", info.value  # type: ignore
        assert sync.Register(pb.RegisterRequest(host="ha", agent_pid=7),
                             timeout=TIMEOUT).host.agent_pid == 7
        sync.ReportStatus(pb.ReportStatusRequest(host="ha", containers=[
            pb.ContainerStatus(name="c-ha", state="running", pid=9)]), timeout=TIMEOUT)
        event = next(iter(sync.Watch(pb.WatchRequest(host="ha"), timeout=TIMEOUT)))
        assert [c.name for c in event.containers] == ["c-ha"]
    refusals = [r for r in running.audit.since(0) if r.code == "PERMISSION_DENIED"]
    assert {r.identity for r in refusals} == {"agent:ha"}
    assert len(refusals) == 4


def test_a_viewer_cannot_create_or_delete_anything(secure: Any, pki_dir: Path) -> None:
    running, store = secure
    with channel_as(running, pki_dir, "user", "viewer") as channel:
        ctl = pb_grpc.ControllerStub(channel)
        with unchanged(store):
            for name in ("CreateHost", "DeleteHost", "CreateNetwork", "DeleteNetwork",
                         "UpdateNetwork", "CreateContainer", "CreateContainers",
                         "DeleteContainer", "DeleteContainers", "UpdateContainer"):
                with pytest.raises(grpc.RpcError) as info:
                    getattr(ctl, name)(CALLS[name], timeout=TIMEOUT)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore


# -- the command line: sdnctl pki, sdnctl events -----------------------------------------------


def test_pki_commands_and_events_over_mutual_tls(tmp_path: Path, capsys: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from sdnctl.cli import cli
    d = str(tmp_path / "pki")
    assert cli.main(["pki", "init", "--dir", d, "--name", "ctl.example"]) == 0
    assert cli.main(["pki", "issue", "--dir", d, "--user", "alice", "--role", "operator",
                     "--days", "30"]) == 0
    assert cli.main(["pki", "issue", "--dir", d, "--agent", "h1"]) == 0
    assert cli.main(["pki", "issue", "--dir", d, "--user", "bob"]) == 1  # no role
    assert cli.main(["pki", "issue", "--dir", d, "--agent", "h/../x"]) == 1
    assert cli.main(["pki", "init", "--dir", d]) == 1  # refuses to overwrite a CA
    assert oct(os.stat(Path(d) / "ca.key").st_mode & 0o777) == "0o600"
    capsys.readouterr()

    store = MemoryStore()
    running = create_server("tcp:127.0.0.1:0", store, tls=TlsFiles.from_dir(d, "controller"),
                            crl=f"{d}/crl.pem", sweep_interval=0)
    try:
        for name in (*TLS_ENV, "SDNCTL_CONTROLLER"):  # cli.main sets them: restore them
            monkeypatch.setenv(name, "")
        cert, key = pki.cert_path(d, "user", "alice")
        flags = ["--controller", f"tcp:{running.address}", "--tls-cert", str(cert),
                 "--tls-key", str(key), "--tls-ca", f"{d}/ca.pem"]
        assert cli.main([*flags, "network", "create", "front", "--subnet",
                         "10.88.0.0/16"]) == 0
        assert cli.main([*flags, "host", "ls"]) == 0
        capsys.readouterr()
        assert cli.main([*flags, "events", "--json"]) == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if line]
        import json

        records = [json.loads(line) for line in lines]
        assert [(r["identity"], r["method"].rsplit("/", 1)[1], r["code"]) for r in records] \
            == [("user:alice(operator)", "CreateNetwork", "OK")]
        assert '"subnet": "10.88.0.0/16"' in records[0]["request"]
        assert records[0]["revision"] == store.revision()

        assert cli.main(["pki", "revoke", "--dir", d, "alice"]) == 0
        assert cli.main([*flags, "host", "ls"]) == 1
        # Refused in the handshake (the CLI says what the controller checks) or, when the call
        # comes before the controller's look at the new CRL file, by its interceptor.
        err = capsys.readouterr().err
        assert "not revoked; see `sdnctl pki ls`" in err or \
            ("UNAUTHENTICATED" in err and "revoked" in err), err
        assert cli.main(["pki", "ls", "--dir", d, "--json"]) == 0
        listed = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
        assert listed["alice"]["revoked"] and not listed["h1"]["revoked"]
    finally:
        running.stop(grace=0)
