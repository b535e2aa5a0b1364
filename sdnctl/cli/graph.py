"""`sdnctl status [FILE]` and `sdnctl graph FILE -o out.svg|png|dot`: what is up, in a table
and as a picture.

Both read the controller (hosts, networks, containers) and, given a topology file, keep only that
topology's objects. ``graph`` draws from the file alone when no controller answers, and adds the
live facts (addresses, leases, VNIs, states) when one does. The drawing is plain DOT text built by
a pure function (:func:`to_dot`), so it is tested without graphviz; ``dot`` renders svg and png.
How it is drawn:

- each host is a cluster holding its network namespace (``eth0`` on the underlay), a bridge per
  network it has, a VXLAN device per overlay network, and its containers;
- a bridged container hangs off its bridge; a closed one stands alone (only ``lo``); containers
  that share a network namespace (a donor and those joined to it) are boxed together; an open
  container is drawn inside the host's namespace box;
- bridges reach the underlay through the host (``NAT`` when masqueraded, nothing when internal);
  allowed pairs of networks are joined by a green ``allow`` edge; each pair of hosts on an overlay
  is joined by one VXLAN tunnel between their VXLAN devices; the underlay leads to the lab's
  outside world.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from agent.names import bridge_name, vxlan_name
from sdnctl.api.client import Client, CommandError, connect
from sdnctl.api.model import (
    DEFAULT_VXLAN_PORT,
    MODE_BRIDGE,
    MODE_CONTAINER,
    MODE_HOST,
    MODE_NONE,
    STATE_RUNNING,
    Container,
    network_mode,
    spans_hosts,
)
from sdnctl.cli.output import container_json, host_json, network_json, print_table
from sdnctl.lab import lab, local
from sdnctl.lab import registry as labregistry
from sdnctl.topology import deploy, topology
from sdnctl.topology.topology import Topology
from sdnctl.v1 import sdnctl_pb2 as pb

# -- what the controller says -----------------------------------------------------------------


@dataclass(frozen=True)
class Live:
    """Hosts, networks and containers as the controller reports them (the `--json` shapes of
    `inspect`), by name."""

    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    containers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def only(self, topo: Topology) -> Live:
        """Just the objects ``topo`` describes, and the CNI attachments on its hosts."""
        hosts = {h.name for h in topo.hosts}
        return Live({k: v for k, v in self.hosts.items() if k in hosts},
                    {k: v for k, v in self.networks.items()
                     if k in {n.name for n in topo.networks}},
                    {k: v for k, v in self.containers.items()
                     if k in {c.name for c in topo.containers}
                     or (v.get("cni_netns") and v["host"] in hosts)})


def read_live(client: Client) -> Live:
    request = pb.ListRequest()
    return Live(
        {h.name: host_json(h) for h in client.api.ListHosts(request, timeout=10).hosts},
        {n.name: network_json(n) for n in client.api.ListNetworks(request, timeout=10).networks},
        {c.name: container_json(c)
         for c in client.api.ListContainers(request, timeout=10).containers})


# -- status ------------------------------------------------------------------------------------


def health(live: Live, topo: Topology | None = None) -> dict[str, Any]:
    """Counts and problems: agents not connected or not synced, containers not running, and
    (given a topology) objects it describes that the controller does not have."""
    agents = [h for h in live.hosts.values() if h["agent_connected"]]
    problems = [f"host {h['name']}: no agent connected" for h in live.hosts.values()
                if not h["agent_connected"]]
    problems += [f"host {h['name']}: agent not synced yet" for h in agents
                 if not h["agent_synced"]]
    problems += [f"container {c['name']}: {c['state']}"
                 + (f" ({c['message']})" if c["message"] else "")
                 for c in live.containers.values() if c["state"] != STATE_RUNNING]
    if topo is not None:
        for kind, names, have in (("host", [h.name for h in topo.hosts], live.hosts),
                                  ("network", [n.name for n in topo.networks], live.networks),
                                  ("container", [c.name for c in topo.containers],
                                   live.containers)):
            problems += [f"{kind} {name}: not at the controller" for name in names
                         if name not in have]
    running = sum(c["state"] == STATE_RUNNING for c in live.containers.values())
    return {"healthy": not problems, "hosts": len(live.hosts), "agents_connected": len(agents),
            "networks": len(live.networks), "containers": len(live.containers),
            "running": running, "problems": problems}


def health_line(h: dict[str, Any]) -> str:
    counts = (f"{h['hosts']} host(s), {h['agents_connected']} agent(s) connected; "
              f"{h['networks']} network(s); {h['running']}/{h['containers']} container(s) "
              "running")
    if h["healthy"]:
        return f"healthy: {counts}"
    return f"UNHEALTHY: {counts}; " + "; ".join(h["problems"])


def _rows_hosts(live: Live) -> list[list[str]]:
    return [[h["name"], "connected" if h["agent_connected"] else "DISCONNECTED",
             str(h["agent_pid"] or "-"), h["underlay_ip"] or "-", str(h["underlay_mtu"] or "-"),
             ", ".join(f"{s['network']} {s['subnet']}" for s in h["subnets"]) or "-"]
            for h in sorted(live.hosts.values(), key=lambda h: h["name"])]


def _rows_networks(live: Live) -> list[list[str]]:
    rows = []
    for n in sorted(live.networks.values(), key=lambda n: n["name"]):
        flags = [f for f, on in (("internal", n["internal"]), ("builtin", n["builtin"]),
                                 ("no-nat", not n["masquerade"])) if on]
        vxlan = f"{n['vni']}/{n['vxlan_port'] or DEFAULT_VXLAN_PORT}" \
            if spans_hosts(n["driver"]) else "-"
        members = sum(c["network"] == n["name"] for c in live.containers.values())
        subnets = " ".join(filter(None, (n["subnet"], n.get("subnet6"))))  # dual-stack: both
        rows.append([n["name"], n["driver"], subnets, str(n["mtu"] or "auto"), vxlan,
                     ", ".join(n["allow"]) or "-", ", ".join(flags) or "-", str(members)])
    return rows


def _rows_containers(live: Live) -> list[list[str]]:
    rows = []
    for c in sorted(live.containers.values(), key=lambda c: (c["host"], c["name"])):
        target = c["shares_netns_of"] or (c["network"] if c["mode"] == MODE_BRIDGE else "")
        donor = live.containers.get(c["shares_netns_of"], {})
        ip = _addresses(c) or (f"({_addresses(donor, False)})"
                               if donor.get("ip") or donor.get("ip6") else "-")
        # (a joined one has its donor's)
        mode = c["owner"][:16] if c.get("cni_netns") else _MODE_WORD[c["mode"]]
        rows.append([c["name"], c["host"], mode, target or "-", ip, c["state"],
                     str(c["pid"] or "-"), ", ".join(c["ports"]) or "-"])
    return rows


def _addresses(c: dict[str, Any], lengths: bool = True) -> str:
    """A container's address in each family it has ("" for none), as status shows them."""
    found = []
    for ip, length in (("ip", "prefixlen"), ("ip6", "prefixlen6")):
        if c.get(ip):
            found.append(f"{c[ip]}/{c[length]}" if lengths else c[ip])
    return " ".join(found)


_MODE_WORD = {MODE_BRIDGE: "bridged", MODE_NONE: "closed", MODE_CONTAINER: "joined",
              MODE_HOST: "open"}


def lab_registry(topo: topology.Topology | None) -> dict[str, Any] | None:
    """The lab registry that runs (of the topology's lab when one is given), or None."""
    if topo is not None:
        found = labregistry.info(deploy.lab_prefix(topo))
        running = [found] if found is not None else []
    else:
        running = labregistry.running()
    if not running:
        return None
    r = running[0]
    return {"address": r.address, "url": r.url, "pid": r.pid, "ca": r.ca,
            "username": r.username, "storage": os.path.join(r.dir, "storage")}


def cmd_status(args: argparse.Namespace) -> int:
    topo = topology.load(args.file) if args.file else None
    client = connect()
    try:
        live = read_live(client)
        endpoints = client.api.GetEndpoints(pb.GetEndpointsRequest(), timeout=10)
    finally:
        client.close()
    if topo is not None:
        live = live.only(topo)
    summary = health(live, topo)
    if args.json:
        print(json.dumps({"controller": {"metrics_url": endpoints.metrics_url,
                                         "ui_url": endpoints.ui_url},
                          "hosts": list(live.hosts.values()),
                          "networks": list(live.networks.values()),
                          "containers": list(live.containers.values()),
                          "health": summary,
                          "lab": {"registry": lab_registry(topo),
                                  "image_stores": image_stores(live)}}, indent=2))
        return 0
    print("HOSTS")
    print_table(_rows_hosts(live), ["NAME", "AGENT", "PID", "UNDERLAY", "MTU", "SUBNETS"])
    print("\nNETWORKS")
    print_table(_rows_networks(live), ["NAME", "DRIVER", "SUBNET", "MTU", "VNI/PORT", "ALLOW",
                                       "FLAGS", "CONTAINERS"])
    print("\nCONTAINERS")
    print_table(_rows_containers(live), ["NAME", "HOST", "MODE", "NETWORK", "IP", "STATE", "PID",
                                         "PORTS"])
    stores = image_stores(live)
    if stores:
        print("\nIMAGE STORES (lab hosts here)")
        print_table([[h, str(u["layers"]), human_bytes(u["bytes"]), str(u["unused_layers"]),
                      human_bytes(u["unused_bytes"])] for h, u in stores.items()],
                    ["HOST", "LAYERS", "SIZE", "UNUSED", "RECLAIMABLE"])
    print("\n" + health_line(summary))
    return 0


def image_stores(live: Live) -> dict[str, dict[str, int]]:
    """The image stores of this machine's lab hosts that the view holds."""
    return {h: local.store_usage(d) for h, d in sorted(local.lab_store_dirs().items())
            if h in live.hosts}


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)}B" if unit == "B" else f"{value:.3g}{unit}"
        value /= 1000
    return f"{size}B"


# -- graph -------------------------------------------------------------------------------------

#: Fill colours for networks, in the order the file lists them.
PALETTE = ("#cfe2ff", "#d1e7dd", "#fff3cd", "#f8d7da", "#e2d9f3", "#d3f4f4", "#fde2c8")
TUNNEL = "#d9480f"
ALLOW = "#2b8a3e"


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**attrs: str | int | float | bool) -> str:
    return "[" + ", ".join(f"{k}={_q(str(v))}" for k, v in attrs.items()) + "]"


class _Dot:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 1

    def add(self, line: str) -> None:
        self.lines.append("  " * self.depth + line)

    def node(self, name: str, **attrs: str | int | float | bool) -> None:
        self.add(f"{_q(name)} {_attrs(**attrs)};")

    def edge(self, a: str, b: str, **attrs: str | int | float | bool) -> None:
        self.add(f"{_q(a)} -- {_q(b)} {_attrs(**attrs)};")

    def open(self, name: str, **attrs: str | int | float | bool) -> None:
        self.add(f"subgraph {_q('cluster_' + name)} {{")
        self.depth += 1
        for key, value in attrs.items():
            self.add(f"{key}={_q(str(value))};")

    def close(self) -> None:
        self.depth -= 1
        self.add("}")


def _bridge_id(host: str, net: str) -> str:
    return f"{host}/bridge/{net}"


def _vxlan_id(host: str, net: str) -> str:
    return f"{host}/vxlan/{net}"


def _host_id(host: str) -> str:
    return f"{host}/netns"


def _ctr_id(name: str) -> str:
    return f"container/{name}"


def _networks_on(topo: Topology, live: Live, host: str) -> list[str]:
    """Networks with a bridge on ``host``: those its bridged containers use, or it has a lease
    of (in the order the file lists them)."""
    used = {c.bridge_network for c in topo.containers if c.host == host}
    leased = {s["network"] for s in live.hosts.get(host, {}).get("subnets", [])}
    return [n.name for n in topo.networks if n.name in used | leased]


def _lease(live: Live, host: str, net: str) -> dict[str, str]:
    return next((s for s in live.hosts.get(host, {}).get("subnets", [])
                 if s["network"] == net), {})


def _container_label(ctr: Container, live: Live) -> str:
    got = live.containers.get(ctr.name, {})
    mode = network_mode(ctr.network)[0]
    lines = [ctr.name]
    if mode == MODE_BRIDGE:
        ip = got.get("ip") or ctr.fixed_ip
        lines.append(f"bridged · {ctr.interface} {ip}" if ip else f"bridged · {ctr.interface}")
        if got.get("ip6") or ctr.fixed_ip6:
            lines.append(f"{ctr.interface} {got.get('ip6') or ctr.fixed_ip6}")  # dual-stack
    elif mode == MODE_NONE:
        lines.append("closed · lo only")
    elif mode == MODE_CONTAINER:
        lines.append(f"joined · netns of {ctr.donor}"
                     + (f" + {', '.join(ctr.share)}" if ctr.share else ""))
    else:
        lines.append("open · host netns")
    if ctr.ports:
        lines.append("ports " + ", ".join(ctr.ports))
    state = got.get("state")
    if state and state != STATE_RUNNING:
        lines.append(state.upper())
    return "\n".join(lines)


def _container_node(dot: _Dot, ctr: Container, live: Live, fill: str) -> None:
    mode = network_mode(ctr.network)[0]
    style = "rounded,filled" + (",dashed" if mode == MODE_NONE else "")
    dot.node(_ctr_id(ctr.name), label=_container_label(ctr, live), shape="box", style=style,
             fillcolor=fill if mode != MODE_NONE else "white")


def _host_cluster(dot: _Dot, topo: Topology, live: Live, host: str, colours: dict[str, str],
                  underlay: str) -> None:
    got = live.hosts.get(host, {})
    agent = "" if not live.hosts else (" · agent connected" if got.get("agent_connected")
                                       else " · NO AGENT")
    dot.open(host, label=f"host {host}{agent}", style="rounded,filled", fillcolor="#f8f9fa",
             color="#495057", fontsize=13)
    mine = [c for c in topo.containers if c.host == host]
    # The host's own network namespace: eth0 on the underlay, and the open containers in it.
    dot.open(f"{host}-netns", label="host network namespace", style="dashed", color="#868e96")
    dot.node(_host_id(host), label=f"eth0\n{underlay}", shape="box", style="filled",
             fillcolor="#dee2e6")
    for ctr in mine:
        if ctr.mode == MODE_HOST:
            _container_node(dot, ctr, live, "#e9ecef")
    dot.close()
    by_name = {n.name: n for n in topo.networks}
    for net in _networks_on(topo, live, host):
        n = by_name[net]
        lease = _lease(live, host, net)
        label = f"{net} · {bridge_name(net)}\n{lease.get('subnet') or n.subnet}"
        if lease.get("gateway"):
            label += f"\ngw {lease['gateway']}"
        if n.internal:
            label += "\ninternal: no egress"
        dot.node(_bridge_id(host, net), label=label, shape="box", style="filled",
                 fillcolor=colours[net], penwidth=1.5)
        if not n.internal:
            dot.edge(_bridge_id(host, net), _host_id(host),
                     label="NAT" if n.masquerade else "routed", color="#868e96", fontsize=8)
        if spans_hosts(n.driver):
            vni = live.networks.get(net, {}).get("vni") or n.vni or "auto"
            port = live.networks.get(net, {}).get("vxlan_port") or n.vxlan_port or \
                DEFAULT_VXLAN_PORT
            dot.node(_vxlan_id(host, net), label=f"{vxlan_name(net)}\nVXLAN {vni} udp/{port}",
                     shape="cds", style="filled", fillcolor="#ffe8cc", color=TUNNEL)
            dot.edge(_bridge_id(host, net), _vxlan_id(host, net), style="dashed", color=TUNNEL,
                     label="routed", fontsize=8)
    # Containers: bridged and closed ones alone; a donor with its joined containers, boxed.
    joined = {c.donor for c in mine if c.donor}
    for ctr in mine:
        if ctr.mode == MODE_HOST or ctr.donor:
            continue
        fill = colours.get(ctr.bridge_network or "", "#ffffff")
        if ctr.name in joined:
            dot.open(f"netns-{ctr.name}", label=f"network namespace of {ctr.name}",
                     style="dashed,rounded", color="#5c7cfa")
            _container_node(dot, ctr, live, fill)
            for other in mine:
                if other.donor == ctr.name:
                    _container_node(dot, other, live, "#edf2ff")
            dot.close()
        else:
            _container_node(dot, ctr, live, fill)
        if ctr.bridge_network:
            dot.edge(_ctr_id(ctr.name), _bridge_id(host, ctr.bridge_network),
                     color="#495057")
    # CNI attachments (issue 17) and Docker endpoints (issue 18): containers of a runtime, not
    # of the topology.
    for c in sorted((c for c in live.containers.values() if c.get("cni_netns")
                     and c["host"] == host), key=lambda c: c["name"]):
        net = c["network"]
        kind = "Docker" if c["owner"].startswith("docker:") else "CNI"
        dot.node(_ctr_id(c["name"]), label=f"{c['owner'][:20]}\n{kind} · {c['interface']} "
                 f"{c['ip']}" + ("" if c["state"] == STATE_RUNNING else f"\n{c['state'].upper()}"),
                 shape="box", style="rounded,filled,dashed", fillcolor=colours.get(net, "#ffffff"))
        if net in _networks_on(topo, live, host):
            dot.edge(_ctr_id(c["name"]), _bridge_id(host, net), color="#495057")
    _allowed_pairs(dot, topo, host, _networks_on(topo, live, host))
    dot.close()


def _allowed_pairs(dot: _Dot, topo: Topology, host: str, here: list[str]) -> None:
    by_name = {n.name: n for n in topo.networks}
    for a, b in combinations(here, 2):
        if b in by_name[a].allow or a in by_name[b].allow:
            dot.edge(_bridge_id(host, a), _bridge_id(host, b), label="allow", color=ALLOW,
                     fontcolor=ALLOW, penwidth=2, constraint=False)


def _underlay_of(topo: Topology, live: Live, host: str) -> str:
    got = live.hosts.get(host, {}).get("underlay_ip")
    if got:
        return str(got)
    lab_hosts = [h.name for h in topo.lab_hosts]
    if host in lab_hosts:  # the lab's addressing, as `sdnctl up` will build it
        index = lab_hosts.index(host)
        segment = lab.SEGMENTS[index % 2 if topo.lab.routed else 0]
        base = segment.gateway.rpartition(".")[0]
        return f"{base}.{lab.HOST_IP_OFFSET + index}"
    return next((h.underlay_ip for h in topo.hosts if h.name == host), "") or "underlay"


def to_dot(topo: Topology, live: Live | None = None) -> str:
    """The topology as a DOT graph (undirected); ``live`` adds what the controller knows."""
    live = live or Live()
    colours = {n.name: PALETTE[i % len(PALETTE)] for i, n in enumerate(topo.networks)}
    source = "live state from the controller" if live.hosts else "from the file alone"
    dot = _Dot()
    dot.add(f"label={_q(f'topology {topo.name} ({source})')};")
    dot.add('labelloc="t"; fontname="Helvetica"; fontsize=16; compound=true; newrank=true;')
    dot.add('nodesep=0.35; ranksep=0.55; pad=0.3;')
    dot.add('node [fontname="Helvetica", fontsize=10];')
    dot.add('edge [fontname="Helvetica", fontsize=9];')
    underlay = "underlay 192.0.2.0/24" + (" + 198.51.100.0/24, routed" if topo.lab.routed
                                          else "")
    if topo.lab_hosts:
        underlay += f"\nMTU {topo.lab.underlay_mtu}"
    dot.node("underlay", label=underlay, shape="box", style="rounded,filled",
             fillcolor="#e9ecef", color="#495057")
    dot.node("external", label=f"outside world\n{lab.EXTERNAL_IP}", shape="ellipse",
             style="filled", fillcolor="#fff9db", color="#e67700")
    dot.edge("underlay", "external", color="#e67700", penwidth=1.5)
    for host in topo.hosts:
        _host_cluster(dot, topo, live, host.name, colours, _underlay_of(topo, live, host.name))
        dot.edge(_host_id(host.name), "underlay", color="#495057", penwidth=1.5)
    _tunnels(dot, topo, live)
    _legend(dot)
    return "graph sdnctl {\n" + "\n".join(dot.lines) + "\n}\n"


def _tunnels(dot: _Dot, topo: Topology, live: Live) -> None:
    """One VXLAN tunnel per pair of member hosts of each overlay network."""
    for net in (n for n in topo.networks if spans_hosts(n.driver)):
        members = [h.name for h in topo.hosts if net.name in _networks_on(topo, live, h.name)]
        vni = live.networks.get(net.name, {}).get("vni") or net.vni
        for a, b in combinations(members, 2):
            dot.edge(_vxlan_id(a, net.name), _vxlan_id(b, net.name), color=TUNNEL, penwidth=2.5,
                     style="bold", label=f"{net.name} tunnel" + (f" VNI {vni}" if vni else ""),
                     fontcolor=TUNNEL, constraint=False)


def _legend(dot: _Dot) -> None:
    rows = [("bridged", "a veth into its network's bridge"),
            ("closed", "own namespace, lo only (dashed)"),
            ("joined", "boxed with the container whose namespace it shares"),
            ("open", "inside the host's network namespace"),
            ("green edge", "networks allowed to talk (routed, no NAT)"),
            ("orange edge", "VXLAN tunnel between hosts")]
    cells = "".join(f'<TR><TD ALIGN="LEFT"><B>{a}</B></TD><TD ALIGN="LEFT">{b}</TD></TR>'
                    for a, b in rows)
    dot.add(f'legend [shape=plaintext, fontsize=9, label=<<TABLE BORDER="0" CELLBORDER="0" '
            f'CELLSPACING="1">{cells}</TABLE>>];')


def render(dot_text: str, out: str) -> None:
    """Write ``out``: DOT text as it is, svg/png through graphviz's ``dot``."""
    kind = out.rpartition(".")[2].lower()
    if kind == "dot" or kind == "gv":
        with open(out, "w") as f:
            f.write(dot_text)
        return
    if kind not in ("svg", "png"):
        raise CommandError(f"cannot write {out!r}: the name must end in .svg, .png or .dot")
    program = shutil.which("dot")
    if program is None:
        raise CommandError("drawing svg or png needs graphviz's `dot` program (apt-get install "
                           "graphviz); `-o FILE.dot` works without it")
    done = subprocess.run([program, f"-T{kind}", "-o", out], input=dot_text, text=True,
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise CommandError(f"dot could not draw {out}: {done.stderr.strip()}")


def cmd_graph(args: argparse.Namespace) -> int:
    topo = topology.load(args.file)
    client = Client()
    try:
        live = read_live(client).only(topo) if client.healthy() else None
    finally:
        client.close()
    render(to_dot(topo, live), args.output)
    source = "live state" if live and live.hosts else "the file alone (no controller answers)"
    print(f"wrote {args.output} ({topo.name}, from {source})")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Print the URL of the controller's live view (and its metrics, with --json)."""
    client = connect()
    try:
        endpoints = client.api.GetEndpoints(pb.GetEndpointsRequest(), timeout=10)
    finally:
        client.close()
    if args.json:
        print(json.dumps({"ui_url": endpoints.ui_url, "metrics_url": endpoints.metrics_url}))
        return 0
    if not endpoints.ui_url:
        raise CommandError("the controller serves no live view (started with --http '')")
    print(endpoints.ui_url)
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    """Print the controller's metrics, or a host's agent's (a lab host's from inside its
    namespace, where its agent listens)."""
    client = connect()
    try:
        if args.host:
            host = client.api.GetHost(pb.GetRequest(name=args.host), timeout=10)
            url, netns = host.metrics_url, host.netns if host.lab else ""
            if not url:
                raise CommandError(f"the agent of host {args.host!r} reported no metrics URL")
        else:
            url = client.api.GetEndpoints(pb.GetEndpointsRequest(), timeout=10).metrics_url
            netns = ""
            if not url:
                raise CommandError("the controller serves no metrics (started with "
                                   "--metrics '')")
    finally:
        client.close()
    print(local.scrape(url, netns), end="")
    return 0


#: How `sdnctl flows` names what dropped packets.
DROP_KINDS = {pb.DROP_KIND_CONTAINER: "container", pb.DROP_KIND_NETWORK: "network",
              pb.DROP_KIND_VXLAN: "vxlan"}


def flows_json(report: pb.FlowsReport) -> dict[str, Any]:
    return {
        "at": report.at,
        "flows": [{"host": f.host, "src": f.src, "dst": f.dst, "proto": f.proto,
                   "src_container": f.src_container, "dst_container": f.dst_container,
                   "packets": f.packets, "bytes": f.bytes, "rate_bps": round(f.rate_bps, 1)}
                  for f in report.flows],
        "drops": [{"host": d.host, "kind": DROP_KINDS.get(d.kind, str(d.kind)),
                   "container": d.container, "network": d.network, "reason": d.reason,
                   "packets": d.packets} for d in report.drops],
    }


def _rate(bps: float) -> str:
    for unit, size in (("MB/s", 1e6), ("kB/s", 1e3)):
        if bps >= size:
            return f"{bps / size:.1f} {unit}"
    return f"{bps:.0f} B/s"


def print_flows(data: dict[str, Any]) -> None:
    def end(address: str, name: str) -> str:
        return f"{name} ({address})" if name else address

    print_table([[f["host"], end(f["src"], f["src_container"]),
                  end(f["dst"], f["dst_container"]), f["proto"], str(f["packets"]),
                  str(f["bytes"]), _rate(f["rate_bps"])] for f in data["flows"]],
                ["HOST", "FROM", "TO", "PROTO", "PACKETS", "BYTES", "RATE"])
    if data["drops"]:
        print("\nDROPPED")
        print_table([[d["host"], d["kind"], d["network"] if d["kind"] == "network"
                      else d["container"] or "-", d["reason"], str(d["packets"])]
                     for d in data["drops"]], ["HOST", "KIND", "OF", "REASON", "PACKETS"])


def cmd_flows(args: argparse.Namespace) -> int:
    """Traffic between containers and the guards' drops, as agents last reported them; with
    --follow, again every --interval seconds."""
    client = connect()
    try:
        while True:
            data = flows_json(client.api.GetFlows(pb.GetFlowsRequest(), timeout=10))
            if args.json:
                print(json.dumps(data), flush=True)
            else:
                if args.follow:
                    print(time.strftime("\n== %H:%M:%S"))
                print_flows(data)
            if not args.follow:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()


def register(sub: Any) -> None:
    """Add this module's verbs to the sdnctl argument parser's sub-parsers."""
    p = sub.add_parser("status", help="hosts, networks and containers as tables, and health")
    p.add_argument("file", nargs="?", help="only this topology's objects")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("ui", help="the URL of the live view: hosts, bridges, VXLAN tunnels and "
                       "containers, updated as they change (a browser on this machine)")
    p.add_argument("--json", action="store_true", help="the live view's and metrics' URLs")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("metrics", help="the controller's Prometheus metrics, or a host's agent's")
    p.add_argument("host", nargs="?", help="this host's agent (default: the controller)")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("flows", help="traffic between containers (conntrack, with rates) and "
                       "what the guards dropped, as agents report them")
    p.add_argument("-f", "--follow", action="store_true", help="print again every --interval")
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_flows)

    p = sub.add_parser("graph", help="draw a topology (svg, png or dot)")
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="OUT.svg or OUT.png (needs graphviz's dot) or OUT.dot")
    p.set_defaults(func=cmd_graph)
