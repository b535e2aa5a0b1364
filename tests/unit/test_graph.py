"""`sdnctl graph` draws from the file alone or with live state; `status` health. Pure: no root,
no controller, no graphviz (DOT text is checked as text)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sdnctl.cli.graph import Live, health, health_line, render, to_dot
from sdnctl.topology.topology import load, parse

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "topology-examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_draws(path: Path, tmp_path: Path) -> None:
    dot = to_dot(load(str(path)))
    assert dot.startswith("graph sdnctl {") and "from the file alone" in dot
    if shutil.which("dot"):  # graphviz accepts it
        subprocess.run(["dot", "-Tsvg", "-o", str(tmp_path / "x.svg")], input=dot, text=True,
                       check=True)


def test_what_is_drawn_from_the_file() -> None:
    topo = parse("""
name: t
hosts: [{name: h1, lab: true}, {name: h2, lab: true}]
networks:
  - {name: ov, driver: overlay, subnet: 10.70.0.0/16}
  - {name: front, subnet: 10.90.0.0/24, allow: [back]}
  - {name: back, subnet: 10.91.0.0/24, internal: true}
containers:
  - {name: web, host: h1, network: ov}
  - {name: side, host: h1, network: "container:web"}
  - {name: api, host: h2, network: ov}
  - {name: a, host: h2, network: front}
  - {name: b, host: h2, network: back}
  - {name: vault, host: h2, network: none}
  - {name: probe, host: h2, network: host}
""", "t.yaml")
    dot = to_dot(topo)
    assert '"h1/vxlan/ov" -- "h2/vxlan/ov"' in dot  # one tunnel for the pair
    assert '"h2/bridge/front" -- "h2/bridge/back"' in dot and 'label="allow"' in dot
    assert '"h2/bridge/back" -- "h2/netns"' not in dot  # internal: no way out
    assert '"h2/bridge/front" -- "h2/netns" [label="NAT"' in dot
    assert "cluster_netns-web" in dot and "joined · netns of web" in dot
    assert "closed · lo only" in dot and "open · host netns" in dot
    assert "192.0.2.10" in dot and "192.0.2.11" in dot  # the lab's addressing
    assert '"underlay" -- "external"' in dot


def test_live_state_adds_addresses_and_vni() -> None:
    topo = parse("name: t\nhosts: [{name: h1, lab: true}]\nnetworks:\n"
                 "  - {name: ov, driver: overlay, subnet: 10.70.0.0/16}\n"
                 "containers:\n  - {name: web, host: h1, network: ov}\n", "t.yaml")
    live = Live({"h1": {"name": "h1", "underlay_ip": "192.0.2.99", "agent_connected": True,
                        "subnets": [{"network": "ov", "subnet": "10.70.3.0/24",
                                     "gateway": "10.70.3.1"}]}},
                {"ov": {"vni": 4242, "vxlan_port": 4789}},
                {"web": {"ip": "10.70.3.2", "state": "running"}})
    dot = to_dot(topo, live)
    for text in ("live state", "192.0.2.99", "10.70.3.0/24", "gw 10.70.3.1", "VXLAN 4242",
                 "10.70.3.2", "agent connected"):
        assert text in dot, text


def test_health_names_what_is_wrong() -> None:
    topo = parse("name: t\nhosts: [{name: h1, lab: true}]\nnetworks: []\n"
                 "containers:\n  - {name: web, host: h1, network: none}\n"
                 "  - {name: db, host: h1, network: none}\n", "t.yaml")
    live = Live({"h1": {"name": "h1", "agent_connected": True, "agent_synced": True}}, {},
                {"web": {"name": "web", "state": "exited", "message": "exit status 1"}})
    h = health(live, topo)
    assert not h["healthy"]
    assert h["problems"] == ["container web: exited (exit status 1)",
                             "container db: not at the controller"]
    assert health_line(h).startswith("UNHEALTHY: 1 host(s), 1 agent(s) connected")


def test_render_refuses_an_unknown_format(tmp_path: Path) -> None:
    from sdnctl.api.client import CommandError
    with pytest.raises(CommandError, match=r"\.svg, \.png or \.dot"):
        render("graph x {}", str(tmp_path / "x.jpg"))
    render("graph x {}\n", str(tmp_path / "x.dot"))
    assert (tmp_path / "x.dot").read_text() == "graph x {}\n"
