"""Fuzzing the topology parser: generated documents (shaped like topologies, with hostile
values) and raw text. ``topology.parse`` either returns a Topology or raises TopologyError (file,
line, path, message); never another exception. Budget and the longer run: see ``fuzzing.py``.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import yaml
from fuzzing import PROFILE, int32s, texts
from hypothesis import given, settings
from hypothesis import strategies as st

from sdnctl.topology import schema, topology

scalars = st.one_of(texts, int32s, st.booleans(), st.none(), st.floats(allow_nan=True),
                    st.lists(texts, max_size=3))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)), max_leaves=8)


def obj(keys: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A mapping with any of ``keys`` (hostile values) and, sometimes, a stray key."""
    return st.fixed_dictionaries({}, optional={**keys, "stray": values})


hosts = obj({"name": texts, "lab": st.one_of(st.booleans(), texts),
             "underlay_ip": texts})
networks = obj({"name": texts, "driver": st.sampled_from(["bridge", "overlay", "x", ""]),
                "subnet": texts, "host_prefix": int32s, "mtu": int32s, "gateway": texts,
                "ip_range": texts, "internal": st.booleans(), "masquerade": values,
                "allow": st.lists(texts, max_size=3), "vni": int32s, "vxlan_port": int32s})
containers = obj({"name": texts, "host": texts, "network": texts, "ip": texts,
                  "command": st.lists(texts, max_size=3), "ports": st.lists(texts, max_size=3),
                  "share": st.lists(texts, max_size=3), "restart": texts,
                  "interface": texts})
expects = obj({"from": texts, "to": texts, "port": int32s, "proto": texts,
               "reach": values})
documents = st.fixed_dictionaries(
    {"name": texts},
    optional={"hosts": st.lists(hosts, max_size=3), "networks": st.lists(networks, max_size=3),
              "containers": st.lists(containers, max_size=4),
              "routes": st.lists(st.lists(texts, max_size=3), max_size=2),
              "lab": obj({"underlay_mtu": int32s, "routed": values}),
              "expect": st.lists(expects, max_size=3), "stray": values})


def parse_or_topology_error(text: str) -> None:
    try:
        topology.parse(text, "fuzz.yaml")
    except topology.TopologyError as e:
        assert str(e).startswith("fuzz.yaml")


@settings(settings.get_profile(PROFILE), max_examples=settings.get_profile(PROFILE).max_examples
          * 5)
@given(doc=documents)
def test_fuzz_topology_documents(doc: dict[str, Any]) -> None:
    parse_or_topology_error(yaml.safe_dump(doc, allow_unicode=True))


def jsonschema_failures(doc: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """What jsonschema, the reference validator, finds wrong: (where, keyword), in order."""
    validator = jsonschema.Draft202012Validator(schema.topology_schema())
    return [(tuple(e.absolute_path), str(e.validator)) for e in validator.iter_errors(doc)]


@settings(settings.get_profile(PROFILE), max_examples=settings.get_profile(PROFILE).max_examples
          * 5)
@given(doc=st.one_of(documents, values))
def test_fuzz_our_schema_validator_agrees_with_jsonschema(doc: Any) -> None:
    """The topology schema's validator (ours, ``schema.failures``) finds what jsonschema finds,
    in the same order, on generated documents with hostile values."""
    assert [(f.path, f.keyword) for f in schema.failures(doc)] == jsonschema_failures(doc)


@settings(settings.get_profile(PROFILE), max_examples=settings.get_profile(PROFILE).max_examples
          * 10)
@given(text=st.one_of(st.text(max_size=200),
                      st.text(alphabet=":-[]{}&*!|>'\"%@`#,? \n\tabc01./", max_size=120)))
def test_fuzz_topology_text(text: str) -> None:
    parse_or_topology_error(text)


@settings(settings.get_profile(PROFILE), max_examples=settings.get_profile(PROFILE).max_examples
          * 3)
@given(doc=documents, cut=st.integers(0, 400))
def test_fuzz_topology_truncated(doc: dict[str, Any], cut: int) -> None:
    parse_or_topology_error(yaml.safe_dump(doc)[:cut])


def test_yaml_bombs_are_refused_quickly() -> None:
    """Aliases that expand exponentially (a "billion laughs") must not take the parser down
    (found by this suite: the line map and the schema check walked every expansion)."""
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}]\n" for i in range(8)) + "name: [*i]\n"
    parse_or_topology_error(bomb)


def test_recursive_aliases_and_deep_nesting_are_refused() -> None:
    parse_or_topology_error("name: &a [*a]\n")
    parse_or_topology_error("name: x\nhosts: &h [{name: h1, lab: *h}]\n")
    parse_or_topology_error("name: " + "[" * 5000 + "]" * 5000 + "\n")
    parse_or_topology_error("name: x\nlab: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n")


def test_a_null_key_does_not_hang_the_line_lookup() -> None:
    """Found by this suite: ``?`` is {None: None}; looking up the line of the schema error
    "None" never reached a parent path and looped forever."""
    parse_or_topology_error("?")
    parse_or_topology_error("name: x\n? [a]\n: 1\n")
