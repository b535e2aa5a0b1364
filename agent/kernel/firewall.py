"""The agent's nftables table ``inet sdnctl``: egress masquerade (later: isolation, anti-spoof).

Design note. The whole table is written by ONE ``nft -f -`` script, which nft applies as one
atomic transaction: ``add table``, ``add chain``, ``flush chain``, then the rules. We never touch
tables we do not own, and our ``forward`` chain has policy accept: a default drop on a hook shared
with the host's own firewall would break it.

To change nothing when nothing changed (same handles, no flush), the script is applied only when
the installed table's fingerprint differs from the wanted one. The fingerprint is the sha of the
rendered script, carried in the comment of a rule of the table, plus the sorted comments of all
installed rules; a rule deleted or added by hand therefore shows up as drift. (A table comment
would be the obvious place for the sha, but nft 1.0.6 neither updates a table's comment on ``add
table`` nor shows it in ``nft -j`` output.)

nft acts on the network namespace it runs in. The agent lives in its host's namespace, so a plain
subprocess is right; ``Firewall(netns_path)`` wraps it in ``nsenter --net=PATH`` for tests.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from agent.kernel.links import KernelError

TABLE_FAMILY = "inet"
TABLE_NAME = "sdnctl"
SHA_COMMENT_PREFIX = "sdnctl:sha/"
NFT_TIMEOUT = 10.0


@dataclass(frozen=True)
class MasqueradeRule:
    """Masquerade traffic from a bridge network's host subnet that leaves the host."""

    network: str  # network name: the owner key is "net/<network>"
    subnet: str  # this host's subnet of the network, "a.b.c.d/len"
    bridge: str  # the network's bridge on this host

    @property
    def comment(self) -> str:
        return f"sdnctl:net/{self.network}"


def _quote(text: str) -> str:
    if '"' in text or "\n" in text:
        raise ValueError(f"cannot quote {text!r} for nft")
    return f'"{text}"'


def _render_body(rules: Sequence[MasqueradeRule]) -> list[str]:
    table = f"{TABLE_FAMILY} {TABLE_NAME}"
    lines = [
        f"add table {table}",
        f"add chain {table} postrouting {{ type nat hook postrouting priority srcnat; }}",
        f"add chain {table} forward {{ type filter hook forward priority filter; policy accept; }}",
        f"flush chain {table} postrouting",
        f"flush chain {table} forward",
    ]
    for r in sorted(rules, key=lambda r: r.network):
        lines.append(
            f"add rule {table} postrouting ip saddr {r.subnet} ip daddr != {r.subnet} "
            f"oifname != {_quote(r.bridge)} masquerade comment {_quote(r.comment)}"
        )
    return lines


def _sha(lines: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def render(rules: Sequence[MasqueradeRule]) -> str:
    """The nft script for ``rules`` (pure). Its last rule's comment carries the script's sha."""
    body = _render_body(rules)
    sha_comment = SHA_COMMENT_PREFIX + _sha(body)
    body.append(
        f"add rule {TABLE_FAMILY} {TABLE_NAME} forward ct state established,related accept "
        f"comment {_quote(sha_comment)}"
    )
    return "\n".join(body) + "\n"


def fingerprint(rules: Sequence[MasqueradeRule]) -> str:
    """What ``Firewall.observe()`` returns once ``render(rules)`` is installed (pure)."""
    comments = [r.comment for r in rules] + [SHA_COMMENT_PREFIX + _sha(_render_body(rules))]
    return _fingerprint_of(comments)


def _fingerprint_of(comments: Sequence[str]) -> str:
    return "\n".join(sorted(comments))


class Firewall:
    """The table ``inet sdnctl`` of one network namespace (None: the caller's)."""

    def __init__(self, netns_path: str | None = None) -> None:
        self._prefix = ["nsenter", f"--net={netns_path}"] if netns_path is not None else []

    def _nft(self, args: Sequence[str], script: str | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                [*self._prefix, "nft", *args], input=script, capture_output=True, text=True,
                timeout=NFT_TIMEOUT, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise KernelError(f"could not run nft {' '.join(args)}") from e

    def observe(self) -> str | None:
        """The installed table's fingerprint, or None when the table is absent."""
        done = self._nft(["-j", "list", "table", TABLE_FAMILY, TABLE_NAME])
        if done.returncode != 0:
            if not self._table_exists():  # nft exits 1 for every error: ask, don't parse text
                return None
            raise KernelError(f"could not list table {TABLE_NAME!r}: {done.stderr.strip()}")
        try:
            items = json.loads(done.stdout)["nftables"]
        except (ValueError, KeyError) as e:
            raise KernelError(f"could not parse table {TABLE_NAME!r}") from e
        comments = [
            item["rule"].get("comment", "") for item in items if "rule" in item
        ]
        return _fingerprint_of(comments)

    def apply(self, rules: Sequence[MasqueradeRule]) -> bool:
        """Install ``rules`` unless they are installed already. Returns True when it wrote."""
        if self.observe() == fingerprint(rules):
            return False
        done = self._nft(["-f", "-"], script=render(rules))
        if done.returncode != 0:
            raise KernelError(f"could not apply table {TABLE_NAME!r}: {done.stderr.strip()}")
        return True

    def _table_exists(self) -> bool:
        done = self._nft(["-j", "list", "tables", TABLE_FAMILY])
        if done.returncode != 0:
            raise KernelError(f"could not list {TABLE_FAMILY} tables: {done.stderr.strip()}")
        try:
            items = json.loads(done.stdout)["nftables"]
        except (ValueError, KeyError) as e:
            raise KernelError(f"could not parse the list of {TABLE_FAMILY} tables") from e
        return any(item.get("table", {}).get("name") == TABLE_NAME for item in items)

    def remove(self) -> None:
        """Delete the table; absent is success. ``add`` first makes the delete always valid, and
        both run in one transaction."""
        table = f"{TABLE_FAMILY} {TABLE_NAME}"
        done = self._nft(["-f", "-"], script=f"add table {table}\ndelete table {table}\n")
        if done.returncode != 0:
            raise KernelError(f"could not delete table {TABLE_NAME!r}: {done.stderr.strip()}")
