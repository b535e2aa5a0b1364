"""The topology JSON Schema: shipped, valid, agrees with the examples, and its errors come out
as `file:line: path: message` before any semantic check runs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from sdnctl.topology import schema
from sdnctl.topology.topology import TopologyError, parse

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "topology-examples").glob("*.yaml"))
HEAD = "name: t\nhosts:\n  - {name: h1, lab: true}\nnetworks:\n"  # lines 1-4
FRONT = "  - {name: front, subnet: 10.88.0.0/16}\n"  # line 5


def error_of(text: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        parse(text, "x.yaml")
    return info.value


def test_the_schema_is_shipped_and_is_valid_json_schema() -> None:
    doc = schema.topology_schema()
    jsonschema.Draft202012Validator.check_schema(doc)
    assert set(doc["properties"]) == {"name", "hosts", "networks", "containers", "routes", "lab",
                                      "expect", "images", "policies"}
    on_disk = json.loads((REPO / "sdnctl" / "topology" / schema.SCHEMA_FILE).read_text())
    assert on_disk == doc


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_satisfies_the_schema(path: Path) -> None:
    assert schema.errors(yaml.safe_load(path.read_text())) == []


#: What replaces a value, one at a time, in the mutations of an example.
BAD_VALUES: list[Any] = [None, True, 0, 1.5, 1e9, -1, "", "Bad_Name", "x" * 70, [], [1],
                         ["a", "b", "c"], {}, {"zz": 1}, 9216.0, 1279]


def mutations(doc: Any) -> Iterator[Any]:
    """``doc`` with one change each: a value replaced by each of BAD_VALUES, a key removed,
    a stray key added, at every place of the document."""
    def at(node: Any, path: tuple[str | int, ...]) -> Iterator[tuple[str | int, ...]]:
        yield path
        children = node.items() if isinstance(node, dict) else enumerate(node) \
            if isinstance(node, list) else ()
        for key, child in children:
            yield from at(child, (*path, key))

    def changed(path: tuple[str | int, ...], change: Callable[[Any, str | int], None]) -> Any:
        copy = json.loads(json.dumps(doc))
        node = copy
        for key in path[:-1]:
            node = node[key]
        change(node, path[-1])
        return copy

    for path in at(doc, ()):
        if not path:
            continue
        for bad in BAD_VALUES:
            yield changed(path, lambda node, key, bad=bad: node.__setitem__(key, bad))
        yield changed(path, lambda node, key: node.__delitem__(key))
        yield changed((*path, "stray"), lambda node, key: isinstance(node, dict)
                      and node.__setitem__(key, 1))


def test_our_validator_finds_what_jsonschema_finds_in_every_mutation_of_the_examples() -> None:
    """The validator is ours (jsonschema's import cost a sixth of the CLI's start); jsonschema
    is the reference: the same failures, keyword and place, in the same order, for every
    single change to every example (thousands of documents)."""
    reference = jsonschema.Draft202012Validator(schema.topology_schema())
    checked = failing = 0
    for path in EXAMPLES:
        for doc in mutations(yaml.safe_load(path.read_text())):
            ours = [(f.path, f.keyword) for f in schema.failures(doc)]
            theirs = [(tuple(e.absolute_path), str(e.validator))
                      for e in reference.iter_errors(doc)]
            assert ours == theirs, (path.name, doc)
            checked += 1
            failing += bool(ours)
    assert checked > 1000 and failing > checked // 2, (checked, failing)


def test_a_keyword_the_validator_does_not_check_is_refused_at_load() -> None:
    assert schema._keywords({"type": "object", "properties": {"a": {"const": 1}}}) == \
        {"type", "properties", "const"}
    assert schema._keywords(schema.topology_schema()) <= {*schema.KEYWORDS, *schema.ANNOTATIONS}


def test_the_schema_knows_every_field_the_loader_reads() -> None:
    defs = schema.topology_schema()["$defs"]
    assert set(defs["network"]["properties"]) == {
        "name", "driver", "subnet", "host_prefix", "mtu", "masquerade", "gateway", "ip_range",
        "internal", "allow", "vni", "vxlan_port", "dns_domain", "dns", "default", "subnet6",
        "host_prefix6", "masquerade6"}
    assert set(defs["container"]["properties"]) == {
        "name", "host", "network", "command", "interface", "ip", "ip6", "ports", "share", "restart",
        "image", "resources", "volumes", "cap_add", "user_ns", "env", "workdir", "aliases", "dns",
        "labels"}
    assert set(defs["container"]["properties"]["resources"]["properties"]) == {
        "memory", "cpus", "cpu_shares", "pids", "ingress", "egress", "burst"}
    assert set(defs["expectation"]["properties"]) == {"from", "to", "reach", "proto", "port"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(HEAD + "  - {name: front, subnet: 10.88.0.0/16, colour: red}\n",
                     "x.yaml:5: networks[0].colour: unknown field; expected one of allow, "
                     "default, dns, dns_domain, driver, gateway, host_prefix, host_prefix6, "
                     "internal, ip_range, masquerade, masquerade6, mtu, name, subnet, subnet6, "
                     "vni, vxlan_port",
                     id="unknown-key"),
        pytest.param(HEAD + FRONT + "containers:\n  - name: web\n    host: h1\n"
                     "    restart: sometimes\n",
                     "x.yaml:9: containers[0].restart: unknown restart policy 'sometimes'; "
                     "expected one of no, always, on-failure", id="enum"),
        pytest.param(HEAD + FRONT + "containers:\n  - {name: web, host: h1, ports: 8080}\n",
                     "x.yaml:7: containers[0].ports: expected a list of strings",
                     id="custom-message"),
        pytest.param(HEAD + FRONT + "routes:\n  - [front]\n",
                     "x.yaml:7: routes[0]: expected a pair of network names, e.g. [front, back]",
                     id="route-not-a-pair"),
        pytest.param(HEAD + FRONT + "lab: {underlay_mtu: 100}\n",
                     "x.yaml:6: lab.underlay_mtu: 100 is outside 1280..9216", id="range"),
        pytest.param(HEAD + FRONT + "containers:\n  - {name: Web, host: h1}\n",
                     "x.yaml:7: containers[0].name: 'Web' is not a valid name (lower-case "
                     "letters, digits and '-', starting and ending with a letter or digit)",
                     id="name-pattern"),
        pytest.param(HEAD + FRONT + "expect:\n  - {from: web, to: db, proto: sctp}\n",
                     "x.yaml:7: expect[0].proto: expected one of icmp, tcp, udp",
                     id="expect-proto"),
        pytest.param(HEAD + FRONT + "expect:\n  - {from: web, to: db, reach: maybe}\n",
                     "x.yaml:7: expect[0].reach: unknown reach 'maybe'; expected one of true, "
                     "false, open, refused, filtered",
                     id="expect-reach"),
    ],
)
def test_schema_errors_name_file_line_and_path(text: str, message: str) -> None:
    assert str(error_of(text)) == message


def test_the_earliest_error_in_the_document_is_reported() -> None:
    text = (HEAD + "  - {name: front, subnet: 10.88.0.0/16, mtu: big}\n"  # line 5
            "  - {name: back, subnet: 10.89.0.0/16, colour: red}\n")  # line 6
    e = error_of(text)
    assert (e.line, e.path) == (5, "networks[0].mtu")


def test_schema_errors_come_before_semantic_ones() -> None:
    # line 5 is semantically wrong (host bits), line 6 is the wrong shape: the shape wins, so
    # a person first fixes what the file *is*, then what it *means*.
    e = error_of(HEAD + "  - {name: front, subnet: 10.88.0.1/16}\n"
                 "  - {name: back, subnet: 10.89.0.0/16, vni: seven}\n")
    assert (e.line, e.path, e.message) == (6, "networks[1].vni", "expected int, got str 'seven'")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(HEAD + FRONT + "  - {name: back, subnet: 10.88.128.0/24}\n",
                     "x.yaml:6: networks[1].subnet: 10.88.128.0/24 overlaps 10.88.0.0/16 of "
                     "network 'front' (networks[0]); give each network its own range",
                     id="overlap-inside"),
        pytest.param(HEAD + "  - {name: small, subnet: 10.1.2.0/24}\n"
                     "  - {name: big, subnet: 10.0.0.0/8}\n",
                     "x.yaml:6: networks[1].subnet: 10.0.0.0/8 overlaps 10.1.2.0/24 of network "
                     "'small' (networks[0]); give each network its own range",
                     id="overlap-around"),
        pytest.param(HEAD + FRONT + "containers:\n"
                     "  - {name: a, host: h1, network: 'container:b'}\n"
                     "  - {name: b, host: h1, network: 'container:a'}\n",
                     "x.yaml:7: containers[0].network: containers join each other in a cycle "
                     "(a -> b -> a): none of them has a network namespace of its own to give; "
                     "make one of them bridged, none or host", id="join-cycle"),
        pytest.param(HEAD + FRONT + "containers:\n"
                     "  - {name: web, host: h1, network: front}\n"
                     "  - {name: a, host: h1, network: 'container:web'}\n"
                     "  - {name: b, host: h1, network: 'container:a'}\n",
                     "x.yaml:9: containers[2].network: 'a' itself joins 'web'; join the "
                     "container that owns the namespace instead (network: \"container:web\")",
                     id="join-chain"),
        pytest.param(HEAD + FRONT + "containers:\n"
                     "  - {name: a, host: h1, network: 'container:ghost'}\n",
                     "x.yaml:7: containers[0].network: unknown container 'ghost'",
                     id="missing-donor"),
    ],
)
def test_semantic_errors_between_objects(text: str, message: str) -> None:
    assert str(error_of(text)) == message


def test_disjoint_neighbouring_subnets_are_fine() -> None:
    topo = parse(HEAD + "  - {name: a, subnet: 10.88.0.0/24}\n"
                 "  - {name: b, subnet: 10.88.1.0/24}\n", "x.yaml")
    assert [n.name for n in topo.networks] == ["a", "b"]
