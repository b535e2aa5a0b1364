"""Containers on THIS machine: what the CLI reads or runs beside the controller's view.

Design note. ``exec``, ``logs`` and ``inspect``'s live usage reach a container directly (its
runtime, its log file, its cgroup), which works for the lab hosts that ``sdnctl up`` built here.
That reach goes through this module, so the CLI package itself never imports the agent or the
kernel helpers: the layer table in ``tests/unit/test_layers.py`` holds it to that.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import urllib.error
import urllib.request
from typing import IO, Any

from dnslib import QTYPE, RCODE, DNSError, DNSRecord

from agent import imagegc, layout
from agent.kernel import cgroups
from agent.kernel.netns import NETNS_RUN_DIR, run_in_netns
from agent.runtime import OciRuntime
from sdnctl.api import paths
from sdnctl.api.client import CommandError
from sdnctl.v1 import sdnctl_pb2 as pb


def live_usage(c: pb.Container) -> dict[str, int] | None:
    """What a running container on THIS machine uses now, read from its cgroup."""
    if c.status.state != "running" or not c.status.cgroup or \
            not cgroups.exists(c.status.cgroup):
        return None
    use = cgroups.usage(c.status.cgroup)
    return {"memory": use.memory, "pids": use.pids, "cpu_usec": use.cpu_usec}


def run_exec(ctr: pb.Container, name: str, command: list[str], tty: bool,
             stdin: int | IO[Any] | None) -> int:
    """Run ``command`` in the container through the runtime that runs it (``docker exec``)."""
    runtime = OciRuntime(ctr.status.runtime, ctr.status.runtime_root, create=False)
    try:
        done = subprocess.run(runtime.exec_argv(name, command, tty), check=False,
                              stdin=stdin, env=runtime.env())
    except OSError as e:
        raise CommandError(f"could not run {runtime.name} exec for {name!r}") from e
    return done.returncode if done.returncode >= 0 else 128 - done.returncode


def log_candidates(run_dir: str, host: str, host_netns: str, ctr_netns: str,
                   lab_states: list[dict[str, Any]]) -> list[str]:
    """Where the agent of ``host`` may keep its files on this machine, best first (pure).

    1. The agent's own report: a sandboxed container's netns is ``<agent run dir>/netns/<name>``.
    2. A lab host's agent runs in ``<run dir>/lab/<host's netns name>`` (`sdnctl up` does this).
    3. The lab state files `sdnctl up` writes: ``<run dir>/lab/<prefix><host>``.
    4. The agent's default run dir for a host: ``/run/sdnctl/<host>``.
    """
    found = []
    parent = os.path.dirname(ctr_netns)
    # (a host-mode container reports its host's namespace, /run/netns/<name>: not a run dir)
    if ctr_netns and os.path.basename(parent) == "netns" and parent != NETNS_RUN_DIR:
        found.append(os.path.dirname(os.path.dirname(ctr_netns)))
    if host_netns:
        found.append(os.path.join(run_dir, "lab", os.path.basename(host_netns)))
    for state in lab_states:
        if host in state.get("agents", {}) and state.get("prefix"):
            found.append(os.path.join(run_dir, "lab", state["prefix"] + host))
    found.append(os.path.join("/run/sdnctl", host))
    return list(dict.fromkeys(found))


def lab_states(run_dir: str) -> list[dict[str, Any]]:
    states = []
    for path in sorted(glob.glob(os.path.join(run_dir, "lab", "*.json"))):
        try:
            with open(path) as f:
                states.append(json.load(f))
        except (OSError, ValueError):
            continue
    return states


def log_file(agent_run_dir: str, name: str) -> str:
    """Where the agent that runs in ``agent_run_dir`` writes container ``name``'s output."""
    return layout.container_file(agent_run_dir, name, "log")


def scrape(url: str, netns: str = "") -> str:
    """The text at ``url`` (a metrics endpoint), fetched from inside the network namespace at
    ``netns`` when given: a lab host's agent listens on its own namespace's loopback."""

    def fetch() -> str:
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                return str(reply.read().decode())
        except (urllib.error.URLError, OSError) as e:
            raise CommandError(f"could not read {url}: {e}") from e

    return run_in_netns(netns, fetch) if netns else fetch()
def lookup_a(netns: str, resolver: str, name: str, timeout: float) -> tuple[str, str]:
    """Ask ``resolver`` (a network's DNS resolver, its gateway) for ``name``'s A record from
    inside ``netns``, as a container's own lookups go. (address, "") or ("", why not)."""
    if not resolver:
        return "", f"{name} does not resolve: the source has no DNS resolver"
    query = DNSRecord.question(name, "A")

    def ask() -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect((resolver, 53))
            s.send(query.pack())
            return s.recv(4096)

    try:
        reply = DNSRecord.parse(run_in_netns(netns, ask))
    except (OSError, DNSError) as e:
        return "", f"{name} does not resolve: no answer from {resolver} ({e})"
    addresses = [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]
    if not addresses:
        return "", f"{name} does not resolve ({RCODE.get(reply.header.rcode)} from {resolver})"
    return addresses[0], ""


def lab_store_dirs() -> dict[str, str]:
    """The image stores of the lab hosts `sdnctl up` built here: host → its agent's store."""
    found = {}
    for state_file in sorted(glob.glob(os.path.join(paths.run_dir(), "lab", "*.json"))):
        try:
            with open(state_file) as f:
                state = json.load(f)
            prefix = state["prefix"]
            hosts = list(state.get("agents", {}))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for host in hosts:
            store = os.path.join(paths.run_dir(), "lab", prefix + host, "store")
            if os.path.isdir(store):
                found[host] = store
    return found


def store_usage(store_dir: str) -> dict[str, int]:
    """What ``sdnctl status`` shows of a host's image store."""
    got = imagegc.usage(store_dir)
    return {"layers": got.layers, "bytes": got.bytes, "unused_layers": got.unused_layers,
            "unused_bytes": got.unused_bytes}


def prune_store(store_dir: str, grace: float, dry_run: bool) -> dict[str, Any]:
    """``sdnctl image prune`` on one store (the agent's own collection, run now)."""
    report = imagegc.prune(store_dir, grace, dry_run=dry_run)
    return {"removed_images": report.removed_images, "removed_layers": report.removed_layers,
            "freed_bytes": report.freed_bytes, "waiting": report.waiting}
