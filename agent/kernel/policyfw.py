"""Network policy in the kernel: applies what ``agent/netpolicy.py`` builds (issue 22).

It remembers what it wrote, so a change of set members is one small transaction
(``render_delta``: flush and refill the changed sets) and an unchanged policy set costs nothing;
``observe`` lists the table (a full pass) and forgets what it wrote when the kernel's rules
differ, so the next apply rewrites the table whole. Bridged traffic between two containers of
one bridge must pass the forward hook: ``net.bridge.bridge-nf-call-iptables`` and
``-ip6tables`` (IPv6) are turned on in the host's namespace when there are policies (they are
per namespace; br_netfilter provides them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

from agent.kernel import nft, sysctl
from agent.kernel.errors import KernelError
from agent.kernel.netns import run_in_netns
from agent.netpolicy import FAMILY, TABLE, PolicyTables, render, render_delta, rule_of_comment

T = TypeVar("T")
BRIDGE_NF = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")


class PolicyFirewall:
    """The table ``inet sdnctl_policy`` in one network namespace (None: the caller's)."""

    def __init__(self, netns_path: str | None = None) -> None:
        self._netns = netns_path
        self._installed: PolicyTables | None = None  # what we last wrote, if still there
        self._counters: dict[tuple[str, str, str], int] = {}

    def _in_netns(self, fn: Callable[[], T]) -> T:
        return fn() if self._netns is None else run_in_netns(self._netns, fn)

    def _nft(self, script: str, flags: int = 0) -> nft.Result:
        return self._in_netns(lambda: nft.run(script, flags))

    def apply(self, tables: PolicyTables) -> bool:
        """Install ``tables`` unless installed already. Returns True when it wrote."""
        if tables == self._installed:
            return False
        if not tables.empty:
            self._in_netns(_bridged_traffic_filtered)
        delta = render_delta(self._installed, tables) if self._installed is not None else None
        if delta == "":
            self._installed = tables
            return False
        for script in ([delta] if delta else []) + [render(tables)]:
            done = self._nft(script)
            if done.returncode == 0:
                self._installed = tables
                return True
        self._installed = None
        raise KernelError(f"could not apply table {FAMILY} {TABLE}: {done.stderr.strip()}")

    def observe(self) -> None:
        """List the table: its counters, and whether it still holds what we wrote."""
        done = self._nft(f"list table {FAMILY} {TABLE}", nft.OUTPUT_JSON)
        if done.returncode != 0:
            if self._installed is not None and not self._installed.empty:
                self._installed = None
            self._counters = {}
            return
        items = json.loads(done.stdout).get("nftables", [])
        rules = [i["rule"] for i in items if "rule" in i]
        comments = sorted(r.get("comment", "") for r in rules)
        if self._installed is not None and comments != self._installed.comments():
            self._installed = None  # drift: rewrite in full on the next apply
        self._counters = counters(rules)

    def counters(self) -> dict[tuple[str, str, str], int]:
        """Packets per (policy, direction, rule) as last listed."""
        return dict(self._counters)


def counters(rules: list[dict[str, object]]) -> dict[tuple[str, str, str], int]:
    found: dict[tuple[str, str, str], int] = {}
    for rule in rules:
        key = rule_of_comment(str(rule.get("comment", "")))
        expr = rule.get("expr")
        if key is None or not isinstance(expr, list):
            continue
        for e in expr:
            if isinstance(e, dict) and "counter" in e:
                found[key] = found.get(key, 0) + int(e["counter"].get("packets", 0))
    return found


def _bridged_traffic_filtered() -> None:
    for name in BRIDGE_NF:
        try:
            sysctl.ensure_sysctl(name, "1")
        except KernelError as e:
            raise KernelError(f"could not set {name} (is br_netfilter loaded?): policies "
                              "between containers of one bridge need it") from e
