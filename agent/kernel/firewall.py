"""The agent's firewall in the kernel: applies what ``agent/nftrules.py`` renders.

Incremental updates. Starting or removing a bridged container changes only its guard, and a
host joining or leaving an overlay only elements of the VXLAN sets, so the ``Firewall`` object
remembers what it wrote (the spec, and the rule handles) and changes just those:
``render_delta`` deletes a guard's rules by handle or inserts them at the place a full render
would put them, adds or deletes the members' elements, and swaps the sha element, in one small
transaction; the tables then list exactly as after ``render(spec)``. Everything else (and a
delta nft refuses: someone changed the tables) is written in full. A delta that only adds (a
container came) leaves the old sha element's delete for later (``Delta.cleanup``: any delete
costs the kernel an RCU grace period, ~15 ms, before it answers, and holds nftables' commit
mutex meanwhile, which the kernel's removal of any network device then waits for): the
caller, a CNI ADD or a pass starting a container, does not wait for it. Such deletes are
pending until the next delta that deletes anyway (a container that goes) takes them into its
one transaction, the next listing or full write, or else CLEANUP_DELAY later, in a thread of
its own; until then the fingerprint set holds the old sha elements too. Each element carries
a generation (``sha_generation``: a delta's is the last one's plus one), and a listing takes
the latest as the tables' sha: an agent killed before its cleanup ran leaves its successor
nothing to repair (it rewrote the whole firewall in its first pass, 0.6 s with 1,000
guards).

Where the handles come from. A delta that makes rules (a guard) runs with ``--echo --handle``
and reads the new rules' handles from what nft prints back; one of elements alone (overlay
members, and the sha) runs without, since echo makes libnftables read every rule of the
tables back first (2 ms of CPU against 0.4 for a host joining a 100-host overlay). A full
script does not echo: it flushes our chains, which frees
their rules' anonymous sets (``oifname != { ... }``, ``ip saddr { ... }``), and the kernel names
the new rules' anonymous sets again from ``__set0``; libnftables 1.0.6's echo looks those names up
in the cache it read before the transaction, finds the freed sets, adds the new elements to
them and prints them with the old set's type. When ``__set1`` held IPv4 addresses (a VXLAN
rule) and now holds interface names (a second network's masquerade rule), printing a 16-byte
name as an address aborts the process (``gmputil.c:82: mpz_get_be32: Assertion `cnt <= 1'
failed``; ``nft -e -f`` aborts the same way). So a full script runs without echo and the
handles come from a listing after it (about what the echo cost: 1,000 guards took 0.76 s
echoed against 0.58 s plus a 0.2 s listing). A delta frees only sets of the shapes it adds
again, in the same table (a guard's ``ether type`` set, a VXLAN rule's address set): the
echo then prints wrong elements, which we do not read, and the right handle.

A pass woken by a change trusts what the agent wrote
(``observe(fresh=False)``: no listing); the agent's periodic full pass lists the ruleset,
and a listing that differs from what was written makes the next write a full one, so drift is
repaired within a resync interval as before. Between full passes the drop counters are read
every flows interval, by one raw netlink dump of our tables' rules (``agent.kernel.nftcounters``)
where conntrack has the bridged flows, else by a listing (the bridge table's flow sets).

nft acts on the network namespace it runs in; we call libnftables in this process
(``agent.kernel.nft``: no nft process per command). The agent lives in its host's namespace, so
the calling thread is right; ``Firewall(netns_path)`` runs the nft commands and the sysctl reads
and writes in a thread inside that namespace, for tests.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from agent.kernel import nft, nftcounters, sysctl
from agent.kernel.errors import KernelError
from agent.kernel.netns import run_in_netns
from agent.names import BRIDGE_PREFIX
from agent.nftrules import (
    BRIDGE_FAMILY,
    FAMILIES,
    FINGERPRINT_SET,
    FLOW_SET,
    OPENED_SET,
    TABLE_FAMILY,
    TABLE_NAME,
    BridgeNet,
    FirewallSpec,
    MasqueradeRule,
    PortGuard,
    PortRule,
    SpecLike,
    VxlanFilter,
    _as_spec,
    _fingerprint_of,
    _tables_fingerprint,
    fingerprint,
    localnet_bridges,
    render,
    render_delta,
    sha_generation,
    sha_item,
)
from sdnctl.api import faults

T = TypeVar("T")
#: Seconds a delta's cleanup may stay pending (see the module note).
CLEANUP_DELAY = 1.0

# --- the kernel -----------------------------------------------------------------------------


#: br_netfilter's switch: bridged IPv4 goes through the IP hooks (and conntrack) in this
#: namespace. Absent without the module.
BRIDGE_NF_IPV4 = "net.bridge.bridge-nf-call-iptables"


def _read_bridge_sysctls() -> tuple[list[str], list[str], bool]:
    """(our bridges with route_localnet=1, our bridges with accept_ra != 0, whether
    br_netfilter hands bridged IPv4 to conntrack), in the calling thread's namespace."""
    localnet, accept_ra = [], []
    for bridge in _our_bridges("net.ipv4.conf"):
        if _read_optional(f"net.ipv4.conf.{bridge}.route_localnet") == "1":
            localnet.append(bridge)
    for bridge in _our_bridges("net.ipv6.conf"):  # no such directory: IPv6 is disabled
        if _read_optional(f"net.ipv6.conf.{bridge}.accept_ra") not in (None, "0"):
            accept_ra.append(bridge)
    return localnet, accept_ra, _read_optional(BRIDGE_NF_IPV4) == "1"


def _our_bridges(key: str) -> list[str]:
    try:
        return sorted(n for n in sysctl.list_sysctls(key) if n.startswith(BRIDGE_PREFIX))
    except FileNotFoundError:
        return []


def _read_optional(key: str) -> str | None:
    """A sysctl's value, or None when it is gone (its interface vanished meanwhile)."""
    try:
        return sysctl.read_sysctl(key)
    except KernelError as e:
        if isinstance(e.__cause__, FileNotFoundError):
            return None
        raise


def _ensure_optional(key: str, value: str) -> bool:
    """Set a sysctl whose interface may not exist yet (the next observe shows it missing).
    Returns True when it wrote."""
    if _read_optional(key) in (None, value):
        return False
    return sysctl.ensure_sysctl(key, value)


def _set_bridge_sysctls(localnet: Sequence[str]) -> bool:
    """route_localnet=1 on ``localnet`` and 0 on our other bridges; accept_ra=0 on all ours.
    Returns True when it wrote."""
    wrote = False
    for bridge in sorted(set(_our_bridges("net.ipv4.conf")) | set(localnet)):
        wrote |= _ensure_optional(f"net.ipv4.conf.{bridge}.route_localnet",
                                  "1" if bridge in localnet else "0")
    for bridge in _our_bridges("net.ipv6.conf"):
        wrote |= _ensure_optional(f"net.ipv6.conf.{bridge}.accept_ra", "0")
    return wrote


class Firewall:
    """The tables ``inet sdnctl`` and ``bridge sdnctl`` and our bridges' sysctls, in one
    network namespace (None: the caller's).

    It remembers what it wrote (the spec, the rules' comments and the handles nft echoed), so
    that ``observe(fresh=False)`` needs no listing and ``apply`` can move one container's
    guard with a small script (``render_delta``). What it remembers is dropped, and the tables
    listed again, whenever a listing shows something else, a write fails or ``fresh`` asks.
    """

    def __init__(self, netns_path: str | None = None) -> None:
        self._netns = netns_path
        self._known = False  # whether _tables holds what the kernel holds, as far as we know
        self._tables: list[str] | None = None  # sorted comments of our rules; None: no tables
        self._installed: FirewallSpec | None = None  # the spec _tables came from, if ours
        self._handles: dict[str, int] = {}  # rule comment -> handle (unique comments only)
        self._error = ""  # nft's complaint about the last failed write
        self._drops: dict[str, int] = {}  # guard -> packets dropped, as last listed
        self._container_drops: dict[tuple[str, str], int] = {}  # (container, guard) -> packets
        self._network_drops: dict[tuple[str, str], int] = {}  # (network, reason) -> packets
        self._bridged: list[FlowSample] = []  # flows between containers of one bridge
        #: conntrack sees bridged IPv4 (br_netfilter), as the last observe read it
        self.bridged_tracked = False
        # Deltas' cleanups not run yet (``Delta.cleanup``: old sha elements' deletes); a listing
        # runs them first (_settle), a timer runs them at the latest (see the module note).
        self._pending: list[str] = []
        self._timer: threading.Timer | None = None
        self._generation = 0  # the sha element's, as last listed or written (sha_generation)
        self._cleanup_lock = threading.Lock()  # a pass, a traffic reading and the timer

    def _settle(self) -> None:
        """Run the pending cleanups now; if that fails, what we know of the tables is
        forgotten (the next apply lists them, and writes them in full)."""
        with self._cleanup_lock:
            script = self._take_pending()
            if not script:
                return
            done = self._nft(script)
            if done.returncode != 0:
                self._known, self._installed, self._handles = False, None, {}
                self._error = done.stderr.strip() or "the cleanup failed"

    def _take_pending(self) -> str:
        """The pending cleanups as one script, no longer pending (the caller holds the lock)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        script, self._pending = "".join(self._pending), []
        return script

    def _defer(self, cleanups: list[str]) -> None:
        """Make ``cleanups`` pending, run CLEANUP_DELAY from now unless something runs them
        first (the caller holds the lock)."""
        self._pending = cleanups
        if cleanups and self._timer is None:
            self._timer = threading.Timer(CLEANUP_DELAY, self._settle)
            self._timer.name, self._timer.daemon = "nft-cleanup", True
            self._timer.start()

    def _nft(self, script: str, flags: int = 0) -> nft.Result:
        return self._in_netns(lambda: nft.run(script, flags))

    def _in_netns(self, fn: Callable[[], T]) -> T:
        return fn() if self._netns is None else run_in_netns(self._netns, fn)

    def _list(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
        """(every item of the ruleset listing, our rules, whether one of our tables exists);
        the counters and flow sets of our tables are kept from it."""
        self._settle()
        done = self._nft("list ruleset", nft.OUTPUT_JSON)
        if done.returncode != 0:
            raise KernelError(f"could not list the ruleset: {done.stderr.strip()}")
        try:
            items = json.loads(done.stdout)["nftables"]
        except (ValueError, KeyError) as e:
            raise KernelError("could not parse the ruleset") from e
        ours = {(f, TABLE_NAME) for f in FAMILIES}
        tables = [i["table"] for i in items if "table" in i]
        rules = [i["rule"] for i in items
                 if "rule" in i and (i["rule"].get("family"), i["rule"].get("table")) in ours]
        exists = any((t.get("family"), t.get("name")) in ours for t in tables)
        if exists:
            self._drops = drop_counts(rules)
            self._container_drops = container_drop_counts(rules)
            self._network_drops = network_drop_counts(rules)
            self._bridged = bridged_flows(items)
        return items, rules, exists

    def read_counters(self) -> None:
        """Read the counters and flow sets only (between two full passes); what is known of
        the tables is left as it is. Where conntrack has the bridged flows (``bridged_tracked``,
        as the last observe read it) the bridge table's flow sets stay empty, and the rules'
        counters come from one raw netlink dump per table (``nftcounters``); else the
        ruleset is listed, sets and all."""
        if not self.bridged_tracked:
            self._list()
            return
        self._settle()
        rules = self._in_netns(_counted_rules)
        if rules:
            self._drops = drop_counts(rules)
            self._container_drops = container_drop_counts(rules)
            self._network_drops = network_drop_counts(rules)
            self._bridged = []

    def _list_tables(self) -> None:
        """List the ruleset: our rules' comments and handles; None when neither table exists."""
        self._known = False
        items, rules, exists = self._list()
        if not exists:
            self._tables, self._handles = None, {}
        else:
            sha, self._generation = _latest_sha(items)
            self._tables = sorted([r.get("comment", "") for r in rules] + sha)
            self._handles = _unique((r.get("comment", ""), r.get("handle")) for r in rules)
        if self._installed is not None and self._tables != _tables_fingerprint(self._installed):
            self._installed = None  # drift: what we wrote is not what is there
        self._known = True

    def observe(self, fresh: bool = True) -> str | None:
        """The installed state's fingerprint, or None when neither table is there.

        ``fresh=False`` trusts what this object last listed or wrote instead of listing the
        ruleset; the bridge sysctls (and ``bridged_tracked``) are always read."""
        if fresh or not self._known:
            self._list_tables()
        localnet, accept_ra, self.bridged_tracked = self._in_netns(_read_bridge_sysctls)
        if self._tables is None:
            return None
        return _fingerprint_of(self._tables, localnet, accept_ra)

    def drops(self) -> dict[str, int]:
        """Packets dropped by our counted drop rules, by guard (``spoof-mac``,
        ``vxlan-not-member``...), as of the last listing (a scrape must not list: see
        agent/metrics.py). Safe to call from any thread."""
        return dict(self._drops)

    def container_drops(self) -> dict[tuple[str, str], int]:
        """Packets each container's guard dropped, by (container, guard), as last listed."""
        return dict(self._container_drops)

    def network_drops(self) -> dict[tuple[str, str], int]:
        """Packets each network's forwarding rules dropped, by (network, reason: isolation,
        internal-in, internal-out), those that dropped something only, as last listed."""
        return dict(self._network_drops)

    def bridged_flows(self) -> list[FlowSample]:
        """Flows between two containers of one bridge (the bridge table's sets), as last
        listed: (source, destination, protocol, packets, bytes), both directions added up."""
        return list(self._bridged)

    def apply(self, spec: SpecLike) -> bool:
        """Install ``spec`` unless it is installed already. Returns True when it wrote.

        The tables are written only when their part of the fingerprint differs from what was
        last listed or written (listed now if nothing is known): with a small script when only
        guards changed since our own last write, else in full. The bridge sysctls are set on
        every bridge that exists (see the module note)."""
        spec = _as_spec(spec)
        if not self._known:
            self._list_tables()
        wanted = _tables_fingerprint(spec)
        wrote = False
        if self._tables != wanted:
            faults.point("nftables")
            delta = render_delta(self._installed, spec, self._handles, self._generation) \
                if self._installed is not None else None
            with self._cleanup_lock:
                pending = self._take_pending()
                # A delta that adds only leaves its cleanup pending too; one that deletes
                # anyway takes the pending ones along (one grace period for all).
                if delta is not None and delta.cleanup:
                    script, later = delta.script, [c for c in (pending, delta.cleanup) if c]
                else:
                    script, later = pending + (delta.script if delta is not None else ""), []
                # A delta that fails (someone changed the tables meanwhile) gives way to the
                # full script, which does not depend on what is there (and flushes the old
                # sha elements with the rest).
                done = delta is not None and self._write(script, spec, full=False,
                                                         echo=delta.makes_rules)
                if done and delta is not None:
                    self._generation = delta.generation
                self._defer(later if done else [])
            if not done and not self._write(render(spec), spec, full=True):
                raise KernelError(f"could not apply tables {TABLE_NAME!r}: {self._error}")
            wrote = True
        localnet = localnet_bridges(spec)
        return self._in_netns(lambda: _set_bridge_sysctls(localnet)) or wrote

    def _write(self, script: str, spec: FirewallSpec, full: bool, echo: bool = False) -> bool:
        """Run ``script`` (one transaction); remember the result and the rules' handles. A
        ``full`` script flushed every chain: it runs without echo and the tables are listed
        after it (see the module note: echo would abort). A delta echoes only when it makes
        rules (``Delta.makes_rules``), for their handles: a change of overlay members is
        elements alone, and without echo libnftables reads no rule back."""
        done = self._nft(script, nft.OUTPUT_ECHO | nft.OUTPUT_HANDLE if echo else 0)
        if done.returncode != 0:
            self._known, self._installed, self._handles = False, None, {}
            self._error = done.stderr.strip()
            return False
        if full:
            self._installed = spec
            self._list_tables()  # forgets ``spec`` again if the tables list otherwise
            return True
        wanted = _tables_fingerprint(spec)
        still = set(wanted)  # (once: a set per handle made each peer pass O(rules²))
        kept = {c: h for c, h in self._handles.items() if c in still}
        self._handles = {**kept, **_unique(_echoed_handles(done.stdout))}
        self._tables, self._installed, self._known = wanted, spec, True
        return True

    def remove(self) -> None:
        """Delete both tables (absent is success) and turn ``route_localnet`` off on our bridges.
        ``add`` first makes each delete always valid; all run in one transaction."""
        with self._cleanup_lock:
            self._take_pending()  # (the tables go, old sha elements with them)
        script = "".join(f"add table {f} {TABLE_NAME}\ndelete table {f} {TABLE_NAME}\n"
                         for f in FAMILIES)
        done = self._nft(script)
        if done.returncode != 0:
            self._known = False
            raise KernelError(f"could not delete tables {TABLE_NAME!r}: {done.stderr.strip()}")
        self._known, self._tables, self._installed, self._handles = True, None, None, {}
        self._in_netns(lambda: _set_bridge_sysctls([]))


def published_port_comments(netns_path: str | None = None) -> set[str]:
    """The comments of the rules in our ``output`` chain (every published port has one
    there: ``sdnctl:ctr/NAME/port/PROTO/PORT``), listed now; empty without our table."""
    def listing() -> nft.Result:
        return nft.run(f"list chain {TABLE_FAMILY} {TABLE_NAME} output", nft.OUTPUT_JSON)

    done = listing() if netns_path is None else run_in_netns(netns_path, listing)
    if done.returncode != 0:
        return set()
    try:
        items = json.loads(done.stdout)["nftables"]
    except (ValueError, KeyError) as e:
        raise KernelError("could not parse the output chain") from e
    return {str(i["rule"].get("comment", "")) for i in items if "rule" in i}


def _counted_rules() -> list[dict[str, object]]:
    """The rules of our tables that drop, with their counters (``nftcounters``), both
    families."""
    return [rule for family in FAMILIES
            for rule in nftcounters.counted_rules(family, TABLE_NAME)]


def drop_counts(rules: Iterable[dict[str, object]]) -> dict[str, int]:
    """Packets counted by our drop rules, summed by guard: the last part of the rule's comment
    (``sdnctl:ctr/web/spoof-ip`` -> ``spoof-ip``), prefixed by its area for VXLAN
    (``sdnctl:vxlan/4789/not-member`` -> ``vxlan-not-member``)."""
    drops: dict[str, int] = {}
    for rule in rules:
        comment = str(rule.get("comment", ""))
        exprs = rule.get("expr")
        if not isinstance(exprs, list) or not any("drop" in e for e in exprs
                                                   if isinstance(e, dict)):
            continue
        packets = next((e["counter"].get("packets", 0) for e in exprs
                        if isinstance(e, dict) and isinstance(e.get("counter"), dict)), None)
        if packets is None:
            continue
        parts = comment.removeprefix("sdnctl:").split("/")
        guard = f"vxlan-{parts[-1]}" if parts[0] == "vxlan" else parts[-1]
        drops[guard] = drops.get(guard, 0) + int(packets)
    return drops


def container_drop_counts(rules: Iterable[dict[str, object]]) -> dict[tuple[str, str], int]:
    """Packets counted by each container's guard rules (``sdnctl:ctr/NAME/GUARD``), by
    (container, guard), those that dropped something only."""
    return _drops_of("ctr", rules)


def network_drop_counts(rules: Iterable[dict[str, object]]) -> dict[tuple[str, str], int]:
    """Packets counted by each network's forwarding drops (``sdnctl:net/NAME/REASON``), by
    (network, reason), those that dropped something only."""
    return _drops_of("net", rules)


def _drops_of(kind: str, rules: Iterable[dict[str, object]]) -> dict[tuple[str, str], int]:
    """Packets dropped by rules commented ``sdnctl:KIND/OWNER/REASON``, by (owner, reason)."""
    drops: dict[tuple[str, str], int] = {}
    for rule in rules:
        parts = str(rule.get("comment", "")).removeprefix("sdnctl:").split("/")
        if len(parts) != 3 or parts[0] != kind:
            continue
        packets = drop_counts([rule]).get(parts[2], 0)
        if packets:
            drops[(parts[1], parts[2])] = drops.get((parts[1], parts[2]), 0) + packets
    return drops


#: (source, destination, protocol, packets, bytes)
FlowSample = tuple[str, str, str, int, int]


def bridged_flows(items: Iterable[dict[str, Any]]) -> list[FlowSample]:
    """The flows of the bridge table's sets (see agent/nftrules.py) in a ruleset listing: one
    per pair of addresses and protocol, both directions' counters added up, oriented from the
    end that spoke first (``opened``; else the lower address)."""
    counted: dict[tuple[str, str, str], tuple[int, int]] = {}
    opened: set[tuple[str, str, str]] = set()
    for item in items:
        found = item.get("set")
        if not isinstance(found, dict) or (found.get("family"), found.get("table")) != \
                (BRIDGE_FAMILY, TABLE_NAME):
            continue
        for key, counter in _set_elements(found):
            if found.get("name") == FLOW_SET and counter is not None:
                counted[key] = counter
            elif found.get("name") == OPENED_SET:
                opened.add(key)
    flows: dict[tuple[str, str, str], list[int]] = {}
    for (src, dst, proto), (packets, size) in counted.items():
        forward = (src, dst, proto) in opened or ((dst, src, proto) not in opened and src < dst)
        key = (src, dst, proto) if forward else (dst, src, proto)
        totals = flows.setdefault(key, [0, 0])
        totals[0] += packets
        totals[1] += size
    return [(s, d, p, n, b) for (s, d, p), (n, b) in sorted(flows.items())]


def _set_elements(found: dict[str, Any]) -> list[tuple[tuple[str, str, str], tuple[int, int] |
                                                       None]]:
    """((source, destination, protocol), (packets, bytes) or None) of each element."""
    elements = []
    for elem in found.get("elem") or []:
        inner = elem.get("elem", elem) if isinstance(elem, dict) else {}
        value = inner.get("val", inner) if isinstance(inner, dict) else inner
        concat = value.get("concat") if isinstance(value, dict) else None
        if not isinstance(concat, list) or len(concat) != 3:
            continue
        counter = inner.get("counter") if isinstance(inner, dict) else None
        counted = (int(counter.get("packets", 0)), int(counter.get("bytes", 0))) \
            if isinstance(counter, dict) else None
        elements.append(((str(concat[0]), str(concat[1]), str(concat[2])), counted))
    return elements


def _latest_sha(items: Iterable[dict[str, Any]]) -> tuple[list[str], int]:
    """The fingerprint's sha item (none, or the latest element of our FINGERPRINT_SET: older
    ones are a delta's cleanup not run yet, ``sha_generation``) and its generation."""
    elements = [str(elem) for i in items if "set" in i
                and (i["set"].get("family"), i["set"].get("table"), i["set"].get("name")) ==
                (TABLE_FAMILY, TABLE_NAME, FINGERPRINT_SET)
                for elem in i["set"].get("elem") or [] if isinstance(elem, str)]
    if not elements:
        return [], 0
    latest = max(elements, key=sha_generation)
    return [sha_item(latest)], sha_generation(latest)


_ECHOED = re.compile(r'comment "([^"]*)" # handle (\d+)$', re.M)


def _echoed_handles(text: str) -> list[tuple[str, int]]:
    """(comment, handle) of every rule ``nft --echo --handle`` printed."""
    return [(c, int(h)) for c, h in _ECHOED.findall(text)]


def _unique(pairs: Iterable[tuple[str, object]]) -> dict[str, int]:
    """comment -> handle, for comments that name one rule only (a published port's comment
    names two, and no delta needs them)."""
    seen: dict[str, int] = {}
    twice: set[str] = set()
    for comment, handle in pairs:
        if not isinstance(handle, int):
            continue
        if comment in seen:
            twice.add(comment)
        seen[comment] = handle
    return {c: h for c, h in seen.items() if c not in twice}


# The spec and its rendering live in agent/nftrules.py; these names stay reachable from here.
__all__ = [
    "TABLE_NAME",
    "BridgeNet",
    "Firewall",
    "FirewallSpec",
    "MasqueradeRule",
    "PortGuard",
    "PortRule",
    "SpecLike",
    "VxlanFilter",
    "fingerprint",
    "localnet_bridges",
    "render",
    "render_delta",
]
