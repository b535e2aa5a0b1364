"""The plan `sdnctl up` prints: a pure diff of the topology against what the controller has."""

from __future__ import annotations

import dataclasses
import io

import pytest

from sdnctl.api.model import Container, Host, Network
from sdnctl.topology.deploy import (
    Change,
    DeployError,
    Observed,
    format_plan,
    plan,
    print_plan,
    refused,
)
from sdnctl.topology.topology import Topology, parse

TEXT = """
name: t
hosts: [{name: h1, lab: true}]
networks:
  - {name: front, subnet: 10.90.0.0/24}
  - {name: back, subnet: 10.91.0.0/24}
  - {name: ov, driver: overlay, subnet: 10.70.0.0/16}
containers:
  - {name: web, host: h1, network: front}
  - {name: db, host: h1, network: back, ip: 10.91.0.10}
  - {name: side, host: h1, network: "container:web"}
"""


def topo(text: str = TEXT) -> Topology:
    return parse(text, "t.yaml")


def as_built(t: Topology) -> Observed:
    """What the controller holds after `up`: the controller chose the overlay's VNI and port;
    the agent filled in the host's runtime fields."""
    nets = {n.name: (dataclasses.replace(n, vni=4096, vxlan_port=4789) if n.driver == "overlay"
                     else n) for n in t.networks}
    return Observed(
        {h.name: dataclasses.replace(h, underlay_ip="192.0.2.10", agent_pid=7) for h in t.hosts},
        nets, {c.name: c for c in t.containers})


def test_nothing_exists_everything_is_added() -> None:
    assert format_plan(plan(topo(), Observed())) == [
        "+ host h1 (lab)",
        "+ network front bridge 10.90.0.0/24",
        "+ network back bridge 10.91.0.0/24",
        "+ network ov overlay 10.70.0.0/16",
        "+ container web on h1, network front",
        "+ container db on h1, network back",
        "+ container side on h1, network container:web",
    ]


def test_the_same_file_again_changes_nothing() -> None:
    t = topo()
    changes = plan(t, as_built(t))
    assert {c.sign for c in changes} == {"="}
    assert format_plan(changes) == ["= 7 unchanged"]


def test_an_edited_file_changes_only_the_difference() -> None:
    t = topo()
    edited = topo(TEXT.replace("{name: back, subnet: 10.91.0.0/24}",
                               "{name: back, subnet: 10.91.0.0/24, allow: [front]}")
                  .replace("{name: web, host: h1, network: front}",
                           "{name: web, host: h1, network: none}")
                  + "  - {name: cache, host: h1, network: back}\n")
    assert format_plan(plan(edited, as_built(t))) == [
        "~ network back: allow [] -> [front]",
        "~ container web: network front -> none",
        "+ container cache on h1, network back",
        "= 5 unchanged",
    ]


def test_fields_are_named_as_in_the_file() -> None:
    t = topo()
    edited = topo(TEXT.replace("ip: 10.91.0.10", "ip: 10.91.0.11"))
    assert format_plan(plan(edited, as_built(t)))[0] == \
        "~ container db: ip 10.91.0.10 -> 10.91.0.11"


def test_what_cannot_change_in_place_is_refused() -> None:
    t = topo()
    edited = topo(TEXT.replace("10.90.0.0/24", "10.92.0.0/24"))
    changes = plan(edited, as_built(t))
    assert str(changes[1]) == ("! network front: subnet 10.90.0.0/24 -> 10.92.0.0/24 cannot "
                               "change in place; run `sdnctl down` first")
    with pytest.raises(DeployError, match="network front: subnet"):
        refused(changes)
    refused(plan(t, as_built(t)))  # nothing refused: no error


def test_a_container_cannot_move_host() -> None:
    have = Observed(containers={"web": Container("web", "h2", "front")})
    change = plan(Topology("t", (Host("h1", lab=True),), (Network("front", "10.90.0.0/24"),),
                           (Container("web", "h1", "front"),)), have)[-1]
    assert change == Change("!", "container", "web", "host h2 -> h1 cannot change in place; "
                            "run `sdnctl down` first")


def test_the_controller_chosen_vni_is_not_a_change() -> None:
    t = topo(TEXT.replace("driver: overlay,", "driver: overlay, vni: 4096,"))
    assert all(c.sign == "=" for c in plan(t, as_built(topo())))
    pinned = topo(TEXT.replace("driver: overlay,", "driver: overlay, vni: 5000,"))
    assert str(plan(pinned, as_built(topo()))[3]).startswith("! network ov: vni 4096 -> 5000")


def test_printed_with_its_source() -> None:
    out = io.StringIO()
    t = topo()
    print_plan(t, plan(t, as_built(t)), "controller at unix:/x", out)
    assert out.getvalue() == "plan for t (controller at unix:/x):\n  = 7 unchanged\n"
