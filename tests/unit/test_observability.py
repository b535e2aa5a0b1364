"""The controller's metrics endpoint and live view without the kernel (issue 23): a real
server on a memory store, real HTTP, the real gRPC API. The lab tests (tests/netns/
test_metrics.py, test_liveview.py) add agents, promtool and a browser."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.kernel.firewall import drop_counts
from agent.main import RETRY, SPREAD, merge_flows, report_due, retry_after, spread
from sdnctl.api import pki
from sdnctl.api.metrics import Counter, Gauge, Histogram, Registry, counter_family
from sdnctl.api.model import STATE_EXITED, STATE_RUNNING, ContainerStatus
from sdnctl.api.tlsfiles import TlsFiles
from sdnctl.controller.flows import FlowTable
from sdnctl.controller.liveview import LiveViewError
from sdnctl.controller.server import RunningServer, create_server
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = create_server(f"unix:{tmp_path / 'c.sock'}", MemoryStore(), sweep_interval=0,
                            metrics_address="127.0.0.1:0", http_address="127.0.0.1:0")
    yield running
    running.stop()


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], ""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_our_exposition_reads_as_prometheus_reads_it() -> None:
    """The metric types of sdnctl/api/metrics.py: counters as NAME_total, cumulative histogram
    buckets ending in +Inf with their count and sum, escaped label values and help texts, a
    collector read at scrape time; prometheus_client's parser and promtool read it back."""
    registry = Registry()
    calls = Counter("demo_calls", "Calls, by method.\nTwo lines; a \\ too.", ["method"],
                    registry=registry)
    calls.labels('Get"x"\\y\nz').inc()
    calls.labels("Put").inc(2.5)
    Gauge("demo_open", "Streams open.", registry=registry).set(3)
    latency = Histogram("demo_seconds", "Latency.", ["method"], buckets=(0.1, 1.0),
                        registry=registry)
    for seconds in (0.05, 0.1, 0.5, 7.0):
        latency.labels("Get").observe(seconds)
    read = {"a": 4}

    class Drops:
        def collect(self) -> list[object]:
            family = counter_family("demo_dropped", "Dropped, by guard.", ["guard"])
            for guard, packets in read.items():
                family.add_metric([guard], packets)
            return [family]

    registry.register(Drops())
    read["b"] = 1  # read at scrape time
    text = registry.exposition().decode()
    assert samples(text) == {
        ("demo_calls_total", (("method", 'Get"x"\\y\nz'),)): 1.0,
        ("demo_calls_total", (("method", "Put"),)): 2.5,
        ("demo_open", ()): 3.0,
        ("demo_seconds_bucket", (("le", "0.1"), ("method", "Get"))): 2.0,
        ("demo_seconds_bucket", (("le", "1.0"), ("method", "Get"))): 3.0,
        ("demo_seconds_bucket", (("le", "+Inf"), ("method", "Get"))): 4.0,
        ("demo_seconds_count", (("method", "Get"),)): 4.0,
        ("demo_seconds_sum", (("method", "Get"),)): 7.65,
        ("demo_dropped_total", (("guard", "a"),)): 4.0,
        ("demo_dropped_total", (("guard", "b"),)): 1.0,
    }
    assert "# HELP demo_calls_total Calls, by method.\\nTwo lines; a \\\\ too.\n" in text
    assert "# TYPE demo_seconds histogram\n" in text
    with pytest.raises(ValueError, match="labels"):
        calls.labels("a", "b")
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/setup.sh installs Debian's prometheus package"
    checked = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                             capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_metrics_count_calls_codes_and_ipam(server: RunningServer) -> None:
    channel = grpc.insecure_channel(server.address)
    api = pb_grpc.ControllerStub(channel)
    endpoints = api.GetEndpoints(pb.GetEndpointsRequest(), timeout=10)
    assert endpoints.metrics_url.startswith("http://127.0.0.1:")
    assert endpoints.ui_url.startswith("http://127.0.0.1:")
    api.CreateHost(pb.CreateHostRequest(host=pb.Host(name="h1")), timeout=10)
    api.CreateNetwork(pb.CreateNetworkRequest(network=pb.Network(
        name="front", subnet="10.9.0.0/16")), timeout=10)
    api.CreateContainer(pb.CreateContainerRequest(container=pb.Container(
        name="web", host="h1", network="front")), timeout=10)
    with pytest.raises(grpc.RpcError) as refused:
        api.CreateNetwork(pb.CreateNetworkRequest(network=pb.Network(name="Bad!")), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()

    status, content_type, text = get(endpoints.metrics_url)
    assert status == 200 and content_type.startswith("text/plain")
    found = samples(text)
    ctl = (("grpc_service", "sdnctl.v1.Controller"),)

    def handled(method: str, code: str) -> float:
        key = tuple(sorted((*ctl, ("grpc_method", method), ("grpc_code", code))))
        return found.get(("sdnctl_grpc_server_handled_total", key), 0)

    assert handled("CreateContainer", "OK") == 1
    assert handled("CreateNetwork", "INVALID_ARGUMENT") == 1
    assert found[("sdnctl_grpc_server_handling_seconds_count",
                  tuple(sorted((*ctl, ("grpc_method", "CreateContainer")))))] == 1
    assert found[("sdnctl_store_txn_seconds_count", ())] >= 3
    front = (("network", "front"),)
    assert found[("sdnctl_ipam_leases", front)] == 1
    assert found[("sdnctl_ipam_addresses_used", front)] == 1
    assert found[("sdnctl_ipam_addresses_free", front)] == 256 - 3 - 1
    assert found[("sdnctl_watch_streams", ())] == 0


def test_the_live_view_serves_its_page_state_and_events(server: RunningServer) -> None:
    assert server.endpoints is not None
    url = server.endpoints.ui_url
    status, content_type, page = get(url)
    assert status == 200 and content_type.startswith("text/html")
    assert '<script src="/app.js"' in page and "http" not in page.replace("http-equiv", "")
    for path, kind in (("app.js", "javascript"), ("app.css", "css")):
        status, content_type, _ = get(url + path)
        assert status == 200 and kind in content_type
    assert get(url + "nothing")[0] == 404

    channel = grpc.insecure_channel(server.address)
    pb_grpc.ControllerStub(channel).CreateHost(
        pb.CreateHostRequest(host=pb.Host(name="h7")), timeout=10)
    channel.close()
    status, _, body = get(url + "api/state")
    assert [h["name"] for h in json.loads(body)["hosts"]] == ["h7"]

    with urllib.request.urlopen(url + "api/events", timeout=10) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        assert stream.readline() == b"event: state\n"
        data = json.loads(stream.readline().decode().removeprefix("data: "))
        assert [h["name"] for h in data["hosts"]] == ["h7"]


def test_the_live_view_refuses_an_address_beyond_loopback(tmp_path: Path) -> None:
    with pytest.raises(LiveViewError, match="loopback"):
        create_server(f"unix:{tmp_path / 'c.sock'}", MemoryStore(), sweep_interval=0,
                      http_address="0.0.0.0:0")


def test_drop_counts_sum_counted_drops_by_guard() -> None:
    def rule(comment: str, packets: int, verdict: str = "drop") -> dict[str, object]:
        return {"comment": comment,
                "expr": [{"counter": {"packets": packets, "bytes": 0}}, {verdict: None}]}

    rules = [rule("sdnctl:ctr/web/spoof-ip", 3), rule("sdnctl:ctr/db/spoof-ip", 2),
             rule("sdnctl:vxlan/4789/not-member", 5), rule("sdnctl:router-advert", 0),
             rule("sdnctl:vxlan/4789/vni/7", 9, "accept"),
             {"comment": "sdnctl:net/a/isolation", "expr": [{"drop": None}]}]
    assert drop_counts(rules) == {"spoof-ip": 5, "vxlan-not-member": 5, "router-advert": 0}


def test_with_tls_the_live_view_wants_a_readers_certificate(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    pki.init(d)
    viewer = pki.issue(d, "user", "vera", role="viewer")
    agent = pki.issue(d, "agent", "h1")
    revoked = pki.issue(d, "user", "rex", role="viewer")
    pki.revoke(d, "rex")
    running = create_server([f"unix:{tmp_path / 'c.sock'}"], MemoryStore(), sweep_interval=0,
                            tls=TlsFiles.from_dir(d, "controller"), crl=str(d / "crl.pem"),
                            http_address="127.0.0.1:0")
    try:
        assert running.endpoints is not None
        url = running.endpoints.ui_url
        assert url.startswith("https://127.0.0.1:")

        def fetch(cert: tuple[Path, Path] | None) -> int:
            context = ssl.create_default_context(cafile=str(d / "ca.pem"))
            context.check_hostname = False
            if cert is not None:
                context.load_cert_chain(str(cert[0]), str(cert[1]))
            try:
                with urllib.request.urlopen(url + "api/state", timeout=10,
                                            context=context) as reply:
                    return int(reply.status)
            except urllib.error.HTTPError as e:
                return e.code
            except (urllib.error.URLError, ssl.SSLError, ConnectionError):
                return 0  # refused in the handshake

        assert fetch(viewer) == 200  # the positive control: the probe works
        assert fetch(None) == 0
        assert fetch(agent) == 403
        assert fetch(revoked) == 403
    finally:
        running.stop()


def test_flow_rates_come_from_successive_reports_of_a_host() -> None:
    now = [100.0]
    table = FlowTable(clock=lambda: now[0])
    flow = pb.Flow(src="10.1.0.2", dst="10.1.1.2", proto="icmp", packets=2, bytes=168)
    drop = pb.Drop(container="web", reason="spoof-ip", packets=3)
    table.update("h1", [flow], [drop])
    version = table.version()
    first = table.report({"10.1.0.2": "web"}).flows[0]
    assert (first.rate_bps, first.src_container, first.dst_container) == (0, "web", "")
    now[0] = 102.0
    table.update("h1", [pb.Flow(src="10.1.0.2", dst="10.1.1.2", proto="icmp", packets=4,
                                bytes=1168)], [drop])
    report = table.report({})
    assert table.version() > version
    assert [f.rate_bps for f in report.flows] == [500.0]
    assert [(d.host, d.container, d.reason, d.packets) for d in report.drops] == \
        [("h1", "web", "spoof-ip", 3)]
    now[0] = 102.0 + 121
    assert not table.report({}).flows  # the host went quiet: stale entries go


def test_drops_keep_their_kind_and_network_through_the_flow_table() -> None:
    table = FlowTable()
    table.update("h1", [], [pb.Drop(kind=pb.DROP_KIND_NETWORK, network="front",
                                    reason="isolation", packets=4),
                            pb.Drop(kind=pb.DROP_KIND_VXLAN, reason="vxlan-not-member",
                                    packets=1)])
    assert [(d.host, d.kind, d.network, d.reason, d.packets) for d in table.report({}).drops] == [
        ("h1", pb.DROP_KIND_NETWORK, "front", "isolation", 4),
        ("h1", pb.DROP_KIND_VXLAN, "", "vxlan-not-member", 1)]


def test_merge_flows_adds_bridged_flows_conntrack_does_not_track() -> None:
    tracked = [("10.1.0.2", "10.1.1.2", "icmp", 4, 336)]
    bridged = [("10.1.1.2", "10.1.0.2", "icmp", 4, 336), ("10.1.0.2", "10.1.0.3", "tcp", 9, 900)]
    assert merge_flows(tracked, bridged) == [("10.1.0.2", "10.1.0.3", "tcp", 9, 900),
                                             ("10.1.0.2", "10.1.1.2", "icmp", 4, 336)]


@pytest.mark.parametrize("drop, field", [
    (pb.Drop(kind=pb.DROP_KIND_NETWORK, network="", reason="isolation"), "drops[0].network"),
    (pb.Drop(container="", reason="spoof-ip"), "drops[0].container"),
    (pb.Drop(kind=7, reason="x"), "drops[0].kind"),
    (pb.Drop(container="web", reason="spoof-ip", packets=-1), "drops[0].packets"),
])
def test_reported_drops_are_checked_by_kind(server: RunningServer, drop: pb.Drop,
                                            field: str) -> None:
    with grpc.insecure_channel(server.address) as channel:
        sync = pb_grpc.HostSyncStub(channel)
        sync.Register(pb.RegisterRequest(host="h1", underlay_ip="192.0.2.1"), timeout=10)
        with pytest.raises(grpc.RpcError) as e:
            sync.ReportStatus(pb.ReportStatusRequest(host="h1", drops=[drop]), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (e.value.details() or "")


def test_a_report_is_due_for_news_not_for_keepalive_notices() -> None:
    """Issue 21: an idle agent reports nothing when keepalive notices alone moved its revision
    (each report was a store write, moving the revision for every other host)."""
    running = [ContainerStatus("c1", STATE_RUNNING, pid=7)]
    last = (10, running)
    assert report_due(None, 10, running, 0, False)  # the first report
    assert not report_due(last, 10, running, 10, False)  # nothing new
    assert not report_due(last, 14, running, 10, False)  # keepalive notices up to 14 alone
    assert report_due(last, 14, running, 12, False)  # an event to report came at 12
    assert report_due(last, 10, [ContainerStatus("c1", STATE_EXITED)], 10, False)
    assert report_due(last, 10, running, 10, True)  # events, flows or drops


def test_periodic_work_is_spread_and_never_later_than_its_interval() -> None:
    """Agents started together must not keep making their full passes at the same moments
    (``agent.main.spread``): each interval is a random 75-100 % of the flag's."""
    got = [spread(10.0) for _ in range(2000)]
    assert all(10.0 * (1 - SPREAD) <= g <= 10.0 for g in got)
    assert max(got) - min(got) > 10.0 * SPREAD * 0.9  # spread over the whole range
    assert spread(float("inf")) == float("inf")  # (--flows-interval 0: none)


def test_a_failed_pass_is_retried_soon_then_less_often() -> None:
    """With the 30-s resync of an agent that hears the kernel, a pass that met errors (no
    progress: an image not there yet, a runtime that refused) must not wait a whole resync:
    it is tried again after RETRY, doubled at each failure in a row, never later than the
    resync."""
    assert [retry_after(n, 30.0) for n in range(1, 8)] == [RETRY * 2 ** k for k in range(5)] \
        + [30.0, 30.0]
    assert retry_after(1, 0.5) == 0.5  # (a resync shorter than RETRY wins)
    assert retry_after(10_000, 30.0) == 30.0
