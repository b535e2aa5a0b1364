"""The CLI's output: protobuf objects as JSON-ready dicts, and plain text tables.

Design note. Every verb module (``cli``, ``verbs``, ``graph``) prints the same objects the same
way, so the dict shapes (what ``--json`` prints and what the tables are made from) and the table
printer live here, below all of them: verb modules import this one, never each other.
"""

from __future__ import annotations

from typing import Any

from sdnctl.api.convert import USERNS_BY_NUMBER
from sdnctl.api.model import MODE_CONTAINER, network_mode
from sdnctl.v1 import sdnctl_pb2 as pb


def host_json(h: pb.Host) -> dict[str, Any]:
    return {
        "name": h.name,
        "underlay_ip": h.underlay_ip,
        "lab": h.lab,
        "netns": h.netns,
        "agent_pid": h.agent_pid,
        "agent_connected": h.agent_connected,
        "observed_revision": h.observed_revision,
        "agent_synced": h.agent_synced,
        "vtep_mac": h.vtep_mac,
        "underlay_mtu": h.underlay_mtu,
        "metrics_url": h.metrics_url,
        "docker_host": h.docker_host,
        "reported_containers": list(h.reported_containers),
        "subnets": [{"network": lease.network, "subnet": lease.subnet,
                     "gateway": lease.gateway, "subnet6": lease.subnet6,
                     "gateway6": lease.gateway6} for lease in h.leases],
        "revision": h.revision,
    }


def network_json(n: pb.Network) -> dict[str, Any]:
    return {"name": n.name, "driver": n.driver, "subnet": n.subnet,
            "host_prefix": n.host_prefix, "gateway": n.gateway, "ip_range": n.ip_range,
            "mtu": n.mtu, "masquerade": n.masquerade, "internal": n.internal,
            "allow": list(n.allow), "builtin": n.builtin, "vni": n.vni,
            "vxlan_port": n.vxlan_port, "revision": n.revision, "subnet6": n.subnet6,
            "host_prefix6": n.host_prefix6 if n.subnet6 else 0, "masquerade6": n.masquerade6}


def container_json(c: pb.Container) -> dict[str, Any]:
    mode, target = network_mode(c.network)
    return {
        "name": c.name,
        "host": c.host,
        "network": c.network,
        "mode": mode,
        # who runs it: "sdnctl", or "cni:<container ID>" for a CNI attachment (issue 17), whose
        # network namespace is the runtime's
        "owner": (f"docker:{c.cni.container_id}" if c.cni.docker else
                  f"cni:{c.cni.container_id}" if c.cni.netns else "sdnctl"),
        "cni_netns": c.cni.netns,
        # joined: whose network namespace it shares (and which of its UTS/IPC)
        "shares_netns_of": target if mode == MODE_CONTAINER else "",
        "share": list(c.share),
        "ports": list(c.ports),
        "restart": c.restart or "no",
        "ip": c.ip,
        "prefixlen": c.prefixlen,
        "gateway": c.gateway,
        "ip6": c.ip6,
        "prefixlen6": c.prefixlen6,
        "gateway6": c.gateway6,
        "interface": c.interface,
        "command": list(c.command),
        "image": c.image,
        "image_id": c.image_id,
        "resources": {"memory": c.resources.memory_bytes, "cpus": c.resources.cpus,
                      "cpu_shares": c.resources.cpu_shares,
                      "pids_limit": c.resources.pids_limit,
                      # bandwidth (issue 22): bits/s into and out of it, bucket in bytes
                      "ingress_bps": c.resources.ingress_bps,
                      "egress_bps": c.resources.egress_bps,
                      "burst_bytes": c.resources.burst_bytes},
        "labels": dict(c.labels),
        "volumes": list(c.volumes),
        "cap_add": list(c.cap_add),
        "user_ns": USERNS_BY_NUMBER.get(c.user_ns, str(c.user_ns)),  # as asked
        "in_user_ns": c.status.user_ns,  # as its host resolved it
        "stopped": c.stopped,
        "state": c.status.state or "pending",
        "exit_code": c.status.exit_code,
        "restarts": c.status.restarts,
        "pid": c.status.pid,
        "netns": c.status.netns,
        "runtime": c.status.runtime,
        "runtime_root": c.status.runtime_root,
        "cgroup": c.status.cgroup,
        "message": c.status.message,
        "revision": c.revision,
    }


def state_text(c: dict[str, Any]) -> str:
    """``exited (137)``, as Docker shows it; ``-1`` is an exit nobody saw."""
    if c["state"] in ("exited", "restarting"):
        code = c["exit_code"]
        return f"{c['state']} ({code if code >= 0 else '?'})"
    return str(c["state"])


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
