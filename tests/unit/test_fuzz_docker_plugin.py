"""Fuzzing the Docker plugin's handlers (issue 18): every method of libnetwork's remote and IPAM
driver protocols with hostile JSON (missing fields, wrong types, nesting, huge bodies), and the
HTTP layer over a real unix socket. A call may succeed or answer ``{"Err": "..."}`` with a 4xx/5xx
status; it must never raise, and a refused call must write nothing: no controller RPC that
changes state, no kernel change, no firewall rule.

The agent's side is small fakes of our own interfaces (``DockerSide``, dockerfakes.py): a
controller that grants addresses from this host's leases, a kernel and a firewall that record
calls.

Budget and the longer run: see ``fuzzing.py`` (``make fuzz``).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from dockerfakes import EID, NID, POOL, make_plugin
from fuzzing import PROFILE, texts
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.dockerplugin import (
    REQUEST_MAX,
    DockerPluginServer,
    port_bindings,
)

#: Values that are right somewhere in the protocol, and wrong ones.
json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False),
    texts, st.sampled_from([NID, EID, POOL, "10.88.3.2/24", "10.88.0.0/16", "sdnctl/",
                            "sdnctl/10.88.3.2", "com.docker.network.gateway", "eth0",
                            "fd00:89::/48", "sdnctl/fd00:89::/48#0a", "fd00:89:0:3::5/64"]))
json_values = st.recursive(json_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)), max_leaves=12)
KEYS = ["NetworkID", "EndpointID", "Options", "Interface", "Address", "AddressIPv6",
        "MacAddress", "IPv4Data", "IPv6Data", "Pool", "PoolID", "SubPool", "V6", "SandboxKey",
        "AddressSpace", "com.docker.network.generic", "com.docker.network.portmap",
        "sdnctl.network", "sdnctl.driver", "RequestAddressType", "Proto", "Port", "HostPort",
        "HostIP"]
requests = st.dictionaries(st.one_of(st.sampled_from(KEYS), texts), json_values, max_size=8)


def methods() -> list[str]:
    plugin, _ = make_plugin()
    return sorted(plugin.methods)


@pytest.mark.parametrize("method", methods())
@settings(settings.get_profile(PROFILE))
@given(body=st.one_of(
    requests.map(lambda r: json.dumps(r).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200)))
def test_hostile_requests_answer_or_refuse_and_refusals_write_nothing(method: str,
                                                                     body: bytes) -> None:
    plugin, controller = make_plugin()
    status, answer = plugin.call(method, body)
    assert isinstance(answer, dict)
    json.dumps(answer)  # what the server sends must encode
    if status == 200:
        assert not answer.get("Err")
    else:
        assert status in (400, 404, 413, 500)
        assert isinstance(answer.get("Err"), str) and answer["Err"]
        assert controller.writes == [], f"{method} refused ({answer['Err']}) but wrote"


def test_a_valid_sequence_succeeds() -> None:
    """The positive control: the calls dockerd makes for `docker run -p 8080:80`."""
    plugin, controller = make_plugin()
    ok = [("IpamDriver.RequestAddress", {"PoolID": POOL, "Address": "", "Options": {}}),
          ("NetworkDriver.CreateEndpoint", {
              "NetworkID": NID, "EndpointID": "x" * 64,
              "Interface": {"Address": "10.88.3.5/24"},
              "Options": {"com.docker.network.portmap": [
                  {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080,
                   "HostPortEnd": 8080}]}})]
    for method, request in ok:
        status, answer = plugin.call(method, json.dumps(request).encode())
        assert status == 200, answer
    assert answer == {"Interface": {"MacAddress": "02:42:0a:58:03:05"}}
    assert [w[0] for w in controller.writes] == ["Attach", "Attach"]
    assert list(controller.writes[1][1].container.ports) == ["8080:80/tcp"]
    status, answer = plugin.call("NetworkDriver.Join", json.dumps(
        {"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/x", "Options": {}}).encode())
    assert status == 200, answer
    assert answer["InterfaceName"]["DstPrefix"] == "eth" and answer["Gateway"] == "10.88.3.1"


def test_unknown_methods_answer_404() -> None:
    plugin, _ = make_plugin()
    status, answer = plugin.call("NetworkDriver.Nope", b"{}")
    assert status == 404 and "Nope" in answer["Err"]


@pytest.mark.parametrize("binding, error", [
    ({"Proto": 6, "Port": 80, "HostPort": 0}, "ephemeral"),
    ({"Proto": 6, "Port": 80, "HostPort": 8080, "HostPortEnd": 8090}, "range"),
    ({"Proto": 132, "Port": 80, "HostPort": 8080}, "protocol"),
    ({"Proto": 6, "Port": "80", "HostPort": 8080}, "numbers"),
    ({"Proto": 6, "Port": 80, "HostPort": 8080, "HostIP": "x"}, "IPv4"),
])
def test_port_bindings_refused_say_why(binding: dict[str, Any], error: str) -> None:
    with pytest.raises(Exception, match=error):
        port_bindings([binding])


def test_port_bindings() -> None:
    assert port_bindings([{"Proto": 17, "Port": 53, "HostPort": 5353,
                           "HostIP": "192.0.2.10"}]) == ["192.0.2.10:5353:53/udp"]
    assert port_bindings(None) == []


def _post(path: str, method: str, body: bytes) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("localhost")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    conn.sock = sock
    headers = {"Content-Length": str(len(body))}
    conn.request("POST", "/" + method, body=body, headers=headers)
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    return response.status, answer


def test_the_socket_speaks_the_plugin_protocol(tmp_path: Path) -> None:
    plugin, controller = make_plugin()
    server = DockerPluginServer(plugin, str(tmp_path / "p.sock"), str(tmp_path / "spec" /
                                                                       "sdnctl.spec"))
    server.start()
    try:
        assert (tmp_path / "spec" / "sdnctl.spec").read_text() == \
            f"unix://{tmp_path / 'p.sock'}\n"
        status, answer = _post(server.socket_path, "Plugin.Activate", b"")
        assert status == 200 and answer == {"Implements": ["NetworkDriver", "IpamDriver"]}
        status, answer = _post(server.socket_path, "NetworkDriver.GetCapabilities", b"{}")
        assert answer == {"Scope": "local", "ConnectivityScope": "global"}
        status, answer = _post(server.socket_path, "IpamDriver.RequestPool", b"{not json")
        assert status == 400 and "bad request" in answer["Err"]
        # A body announced larger than the limit is refused before it is read.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(10)
            raw.connect(server.socket_path)
            raw.sendall(b"POST /IpamDriver.RequestPool HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Length: %d\r\n\r\n" % (REQUEST_MAX + 1))
            reply = raw.makefile("rb").read()
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 413") and json.loads(body)["Err"]
        status, answer = _post(server.socket_path, "Nope.Nope", b"{}")
        assert status == 404
        assert controller.writes == []
    finally:
        server.stop()
    assert not (tmp_path / "p.sock").exists() and not (tmp_path / "spec" / "sdnctl.spec").exists()


def test_only_endpoints_joined_before_a_pass_looked_are_collected() -> None:
    plugin, controller = make_plugin()
    plugin.joined["dk-1"] = 10.0
    plugin.forget_gone(["dk-1", "dk-never-joined"], observed_at=5.0)  # joined after it looked
    assert controller.writes == [] and "dk-1" in plugin.joined
    plugin.forget_gone(["dk-1", "dk-never-joined"], observed_at=11.0)
    deadline = time.monotonic() + 5
    while not controller.writes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [(kind, request.name) for kind, request in controller.writes] == [("Detach", "dk-1")]
    assert "dk-1" not in plugin.joined


def test_releasing_a_networks_gateway_detaches_no_endpoint() -> None:
    """`--gateway` equal to an endpoint's address: the gateway's release is not the endpoint's."""
    plugin, controller = make_plugin()
    gateway = {"PoolID": POOL, "Address": "10.88.3.2",
               "Options": {"RequestAddressType": "com.docker.network.gateway"}}
    assert plugin.call("IpamDriver.RequestAddress", json.dumps(gateway).encode()) == \
        (200, {"Address": "10.88.3.2/16", "Data": {}})
    release = {"PoolID": POOL, "Address": "10.88.3.2"}
    assert plugin.call("IpamDriver.ReleaseAddress", json.dumps(release).encode()) == (200, {})
    assert controller.writes == []
    # the endpoint's own release, afterwards, detaches it
    assert plugin.call("IpamDriver.ReleaseAddress", json.dumps(release).encode()) == (200, {})
    assert [(kind, request.name) for kind, request in controller.writes] == [("Detach", "dk-1")]
