"""Topology files: YAML in, model objects out; errors name file, line and path."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdnctl.api.model import Container, Host, Network
from sdnctl.topology.topology import TopologyError, load, parse

EXAMPLES = Path(__file__).resolve().parents[2] / "topology-examples"


def error_of(text: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        parse(text, "x.yaml")
    return info.value


def test_single_host_example_loads_into_the_model() -> None:
    topo = load(str(EXAMPLES / "single-host.yaml"))
    assert (topo.name, topo.hosts) == ("single", (Host("h1", lab=True),))
    assert topo.networks == (Network("front", "10.88.0.0/16", driver="bridge", host_prefix=24,
                                     mtu=1500, masquerade=True),)
    assert topo.containers == (
        Container("web", "h1", "front", command=("sleep", "infinity"), interface="eth0"),
        Container("db", "h1", "front", command=("sleep", "infinity"), interface="eth0"),
        Container("sidecar", "h1", "container:web", share=("uts",)),
        Container("vault", "h1", "none"),
        Container("probe", "h1", "host"),
    )
    assert {c.mode for c in topo.containers} == {"bridge", "container", "none", "host"}
    assert topo.lab_hosts == (Host("h1", lab=True),)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_parses(path: Path) -> None:
    topo = load(str(path))
    assert topo.hosts and topo.networks, f"{path.name} describes no hosts or no networks"


def test_explicit_fields_override_defaults() -> None:
    topo = parse(
        "name: t\n"
        "hosts:\n"
        "  - {name: h1, lab: true, underlay_ip: 192.0.2.1}\n"
        "networks:\n"
        "  - {name: n, subnet: 10.1.0.0/16, host_prefix: 26, mtu: 9000, masquerade: false}\n"
        "containers:\n"
        "  - {name: c, host: h1, network: n, command: nc -l 80, interface: net1}\n",
        "x.yaml",
    )
    assert topo.hosts == (Host("h1", underlay_ip="192.0.2.1", lab=True),)
    assert topo.networks == (Network("n", "10.1.0.0/16", host_prefix=26, mtu=9000,
                                     masquerade=False),)
    assert topo.containers == (Container("c", "h1", "n", ("nc", "-l", "80"), "net1"),)


HEAD = "name: t\nhosts:\n  - {name: h1, lab: true}\nnetworks:\n"  # lines 1-4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            HEAD + "  - {name: front, subnet: 10.88.0/16}\n",
            "x.yaml:5: networks[0].subnet: '10.88.0/16' is not a CIDR such as 10.88.0.0/16",
            id="malformed-cidr"),
        pytest.param(
            HEAD + "  - name: front\n    subnet: 10.88.0.1/16\n",
            "x.yaml:6: networks[0].subnet: 10.88.0.1/16 has host bits set; "
            "did you mean 10.88.0.0/16?",
            id="host-bits-block-style"),
        pytest.param(
            HEAD + "  - name: front\n    subnet: 10.88.0.0/16\n    colour: red\n",
            "x.yaml:7: networks[0].colour: unknown field; expected one of allow, default, dns, "
            "dns_domain, driver, gateway, host_prefix, host_prefix6, internal, ip_range, "
            "masquerade, masquerade6, mtu, name, subnet, subnet6, vni, vxlan_port",
            id="unknown-field"),
        pytest.param(
            "name: t\nextra: 1\n",
            "x.yaml:2: extra: unknown field; expected one of containers, expect, hosts, images, "
            "lab, name, networks, policies, routes",
            id="unknown-top-level-field"),
        pytest.param(
            HEAD + "  - name: front\n    mtu: 1400\n",
            "x.yaml:5: networks[0].subnet: required (a CIDR such as 10.88.0.0/16), or only a "
            "subnet6 for an IPv6-only network",
            id="missing-subnet"),
        pytest.param(
            "hosts: []\n",
            "x.yaml:1: missing required field 'name'",
            id="missing-topology-name"),
        pytest.param(
            "name: t\nhosts:\n  - {name: h1, lab: true}\n  - {name: h1, lab: true}\n",
            "x.yaml:4: hosts[1].name: duplicate name 'h1' (also hosts[0])",
            id="duplicate-host"),
        pytest.param(
            HEAD + "  - {name: front, subnet: 10.88.0.0/16}\n"
            "containers:\n"
            "  - {name: web, host: h1, network: front}\n"
            "  - {name: web, host: h1, network: front}\n",
            "x.yaml:8: containers[1].name: duplicate name 'web' (also containers[0])",
            id="duplicate-container"),
        pytest.param(
            HEAD + "  - {name: front, subnet: 10.88.0.0/16}\n"
            "containers:\n"
            "  - {name: web, host: h1, network: back}\n",
            "x.yaml:7: containers[0].network: unknown network 'back'; networks are front (or "
            "none, host, container:<name>)",
            id="unknown-network"),
        pytest.param(
            HEAD + "  - {name: front, subnet: 10.88.0.0/16}\n"
            "containers:\n"
            "  - name: web\n"
            "    network: front\n"
            "    host: h2\n",
            "x.yaml:9: containers[0].host: unknown host 'h2'; hosts are h1",
            id="unknown-host"),
        pytest.param(
            HEAD + "  - name: front\n    subnet: 10.88.0.0/16\n    mtu: \"big\"\n",
            "x.yaml:7: networks[0].mtu: expected int, got str 'big'",
            id="mtu-wrong-type"),
        pytest.param(
            HEAD + "  - name: front\n    subnet: 10.88.0.0/16\n    mtu: 100\n",
            "x.yaml:7: networks[0].mtu: 100 is outside 576..65535",
            id="mtu-out-of-range"),
        pytest.param(
            "name: t\nhosts:\n  - {name: h1, lab: yes please}\n",
            "x.yaml:3: hosts[0].lab: expected bool, got str 'yes please'",
            id="bool-wrong-type"),
        pytest.param(
            HEAD + "  - {name: front, subnet: 10.88.0.0/16, driver: vxlan}\n",
            "x.yaml:5: networks[0].driver: unknown driver 'vxlan'; expected one of bridge, "
            "overlay",
            id="unknown-driver"),
        pytest.param(
            "name: t\nhosts:\n  - {name: " + "a" * 64 + ", lab: true}\n",
            "x.yaml:3: hosts[0].name: 'aaaaaaaaaaaaaaaaaaaa'... is longer than 63 characters",
            id="name-too-long"),
        pytest.param(
            "name: t\nhosts: {h1: x}\n",
            "x.yaml:2: hosts: expected a list, got dict",
            id="hosts-not-a-list"),
        pytest.param(
            "name: t\nhosts:\n  h1: x\n",
            "x.yaml:2: hosts: expected a list, got dict",
            id="block-value-reported-at-its-key"),
        pytest.param(
            "- a\n",
            "x.yaml:1: expected a mapping, got list",
            id="document-not-a-mapping"),
    ],
)
def test_errors_name_file_line_and_path(text: str, message: str) -> None:
    assert str(error_of(text)) == message


def test_error_attributes() -> None:
    e = error_of(HEAD + "  - {name: front, subnet: 10.88.0.1/16}\n")
    assert (e.file, e.line, e.path) == ("x.yaml", 5, "networks[0].subnet")
    assert e.message == "10.88.0.1/16 has host bits set; did you mean 10.88.0.0/16?"


def test_a_name_of_63_characters_is_fine() -> None:
    topo = parse("name: t\nhosts:\n  - {name: " + "a" * 63 + ", lab: true}\n", "x.yaml")
    assert topo.hosts[0].name == "a" * 63


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("name: t\nhosts:\n  - {name: h1, lab: true\nnetworks: []\n",
                     "x.yaml:4: not valid YAML: expected ',' or '}', but got ':'",
                     id="unclosed-flow-mapping"),
        pytest.param("name: t\nhosts:\n  - name: h1\n   lab: true\n",
                     "x.yaml:4: not valid YAML: expected <block end>, but found "
                     "'<block mapping start>'",
                     id="bad-indentation"),
    ],
)
def test_invalid_yaml_reports_the_line(text: str, message: str) -> None:
    e = error_of(text)
    assert str(e) == message
    assert e.line == 4


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_empty_document(text: str) -> None:
    e = error_of(text)
    assert str(e) == "x.yaml: empty document"
    assert e.line is None


def test_load_of_a_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(TopologyError) as info:
        load(str(path))
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


CONTAINER_HEAD = HEAD + "  - {name: front, subnet: 10.88.0.0/16}\ncontainers:\n"  # lines 1-6


def test_containers_from_images_with_resources_and_volumes(tmp_path: Path) -> None:
    (tmp_path / "busybox.tar").write_bytes(b"x")
    path = tmp_path / "t.yaml"
    path.write_text("images: [busybox.tar]\n" + CONTAINER_HEAD +
                    "  - name: web\n    host: h1\n    network: front\n    image: busybox\n"
                    "    resources: {memory: 64m, cpus: 0.5, cpu_shares: 512, pids: 100}\n"
                    "    volumes: ['data:/var/lib/data', '/srv:/srv:ro']\n"
                    "    cap_add: [NET_RAW]\n    user_ns: true\n    env: [A=1]\n")
    topo = load(str(path))
    assert topo.images == (str(tmp_path / "busybox.tar"),)
    web = topo.containers[0]
    assert (web.image, web.command, web.memory, web.cpus, web.cpu_shares, web.pids_limit) == \
        ("busybox", (), 64 << 20, 0.5, 512, 100)
    assert web.volumes == ("data:/var/lib/data", "/srv:/srv:ro") and web.user_ns == "private"
    assert web.cap_add == ("NET_RAW",) and web.env == ("A=1",)


@pytest.mark.parametrize(("body", "want"), [
    ("", "auto"), ("    user_ns: true\n", "private"), ("    user_ns: false\n", "host"),
    ("    user_ns: host\n", "host"), ("    user_ns: auto\n", "auto")])
def test_user_ns_words_and_booleans(body: str, want: str) -> None:
    text = CONTAINER_HEAD + "  - name: web\n    host: h1\n" + body
    assert parse(text, "x.yaml").containers[0].user_ns == want


@pytest.mark.parametrize(("body", "message"), [
    ("    resources: {memory: lots}\n",
     "x.yaml:9: containers[0].resources.memory: 'lots' is not a size such as 64m or 1g"),
    ("    resources: {pids: -3}\n",
     "x.yaml:9: containers[0].resources.pids: -3: expected 1 to 4194304 (0: no limit)"),
    ("    volumes: ['data:/x/../../etc']\n",
     "x.yaml:9: containers[0].volumes[0]: '/x/../../etc' must be a plain absolute path "
     "(no '..', '.' or '//')"),
    ("    user_ns: sometimes\n",
     "x.yaml:9: containers[0].user_ns: unknown user_ns 'sometimes'; expected one of true, false, "
     "auto, private, host"),
])
def test_runtime_fields_errors_name_file_and_line(body: str, message: str) -> None:
    text = CONTAINER_HEAD + "  - name: web\n    host: h1\n" + body
    with pytest.raises(TopologyError) as info:
        parse(text, "x.yaml")
    assert str(info.value) == message


LAB_NETWORK = """\
name: t
{lab}hosts:
  - {{name: h1, lab: true}}
networks:
  - {{name: ok, subnet: 10.1.0.0/16}}
  - {{name: n, subnet: {subnet}}}
"""


@pytest.mark.parametrize(("subnet", "routed", "what"), [
    ("203.0.113.0/24", False, "the lab's outside world"),
    ("203.0.113.128/25", False, "the lab's outside world"),
    ("192.0.2.0/29", False, "the lab's underlay"),
    ("198.51.100.0/24", True, "the lab's underlay"),
])
def test_a_network_on_the_labs_own_ranges_is_refused(subnet: str, routed: bool,
                                                      what: str) -> None:
    text = LAB_NETWORK.format(lab="lab: {routed: true}\n" if routed else "", subnet=subnet)
    error = error_of(text)
    assert str(error).startswith(f"x.yaml:{6 + routed}: networks[1].subnet: {subnet} overlaps")
    assert what in str(error)
    # control: the flat lab has no second segment
    if routed:
        assert parse(LAB_NETWORK.format(lab="", subnet=subnet), "x.yaml").networks[1].subnet \
            == subnet


def test_a_topology_keeps_the_lines_of_its_objects() -> None:
    topo = parse(LAB_NETWORK.format(lab="", subnet="10.2.0.0/16"), "x.yaml")
    assert str(topo.error("networks[1].subnet", "no")) == "x.yaml:6: networks[1].subnet: no"
    assert str(topo.error("networks[1].allow[0]", "no")).startswith("x.yaml:6: ")


def test_a_lab_host_may_run_docker() -> None:
    topo = parse("name: t\nhosts:\n  - {name: h1, lab: true, docker: true}\n  - {name: h2, "
                 "lab: true}\nnetworks: []\ncontainers: []\n", "x.yaml")
    assert [(h.name, h.docker) for h in topo.lab_hosts] == [("h1", True), ("h2", False)]
    error = error_of("name: t\nhosts:\n  - {name: h1, lab: true, docker: 'yes'}\n")
    assert str(error).startswith("x.yaml:3: hosts[0].docker:"), str(error)
