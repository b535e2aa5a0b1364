"""Issue 10.6: churn. Containers of every network mode (bridged, closed, open, joined) are created
and deleted through the API, round after round; afterwards the host is back to its baseline:
namespaces, links, mounts, cgroups, nftables rules, store rows, and the agent's open file
descriptors and memory. Prints the deltas.

``SDNCTL_SOAK_CYCLES`` sets the number of create/delete cycles (one container each, four per
round; default 88: 10 warm-up rounds, then 12 whose memory growth is measured; `make soak` runs
2,000).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cli import Cli, lab_cli
from helpers.hoststate import api, get_host, host_state, wait_for

from sdnctl.api.client import Client
from sdnctl.v1 import sdnctl_pb2 as pb

pytestmark = pytest.mark.netns

CYCLES = int(os.environ.get("SDNCTL_SOAK_CYCLES") or 88)
MODES = 4
#: Memory. The agent's RSS after each round (four cycles) grows fast at first (first-use
#: allocations, caches, the allocator's arenas filling), then slowly: on this 2-core machine,
#: over 120 rounds, the first 10 rounds grew up to 12 kB per cycle, the later ones 1-4 kB per
#: cycle, with a lone step of 1.4 MB (a new arena) now and then. A leak per container is larger:
#: an IPRoute left open costs 21 kB; the 2,000-cycle run once grew 26 kB per cycle. So the
#: check fits a least-squares slope to the rounds after WARMUP_ROUNDS, leaving out lone steps
#: (a round that grew more than 256 kB and ten times the typical round), and fails above
#: RSS_KB_PER_CYCLE. Measured here: without a leak 3.2 and 5.9 kB/cycle in two default runs
#: (36.5 in the first had its lone 1.4 MB step been kept), 3.4 to 5.6 over every 12-round window
#: after the warm-up of a 120-round run (the machine's other load changes it: rounds grow in
#: 4-76 kB allocator chunks); with a deliberate leak of 21 kB per container started (a local
#: patch of the agent) 25.8 kB/cycle. The bound sits between, with room for the noise.
#: Since the policy merge (issue 22) the slope without a leak is higher and wider: 8.0 and 12.6
#: kB/cycle in two default runs (the second beside another test file, as the two-worker suite
#: runs it), 7.2 over 30 rounds after the warm-up on a quiet machine (5.2 with
#: MALLOC_ARENA_MAX=1). Where it goes is not found: tracemalloc sees the Python heap grow 0.5
#: kB/cycle; libnftables contexts and pyroute2 sockets, looped alone, grow nothing. Twelve
#: rounds after the warm-up cannot tell 12 from 16 kB/cycle, so the default run's bound catches
#: a leak of a socket per container (25.8) and the long run (`make soak`) keeps the tight one.
WARMUP_ROUNDS = int(os.environ.get("SDNCTL_SOAK_WARMUP_ROUNDS") or 10)
RSS_KB_PER_CYCLE = 12 if CYCLES >= 400 else 20
#: A round that grew more than this, and ten times the typical round, is a lone allocator step.
RSS_STEP_KB = 256
#: Not expected back to the baseline: memory is judged by its slope.
NOISY = ("agent rss kB",)
#: May end below the baseline, never above: the baseline is taken just after round 0's
#: removal, when the agent's exit watcher may still hold the pidfds of its four processes.
SHRINKING = ("agent fds",)
#: The runtime's mount-namespace copy (``agent/kernel/mountns.py``) is one descriptor the
#: agent drops when the host's mounts change (another test's, in a two-worker run) and takes
#: again at the next start: held at one moment, not at another. So it is counted apart from
#: the other descriptors, as how many copies beyond one are held (0, or a leak).
MOUNT_NS_FD = "mnt:["


def grew(key: str, delta: int) -> bool:
    """Whether a change of ``key`` by ``delta`` is a leak."""
    return key not in NOISY and (delta > 0 if key in SHRINKING else delta != 0)

TOPOLOGY = """\
name: soak
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.79.0.0/22, host_prefix: 22}
containers:   # holds h1's lease, so the bridge and the table are part of the baseline
  - {name: keep, host: h1, network: front, command: [sleep, "3600"]}
"""


@pytest.fixture
def cli(tmp_path: Path, run_prefix: str) -> Iterator[Cli]:
    path = tmp_path / "soak.yaml"
    path.write_text(TOPOLOGY)
    with lab_cli(run_prefix) as c:
        c.env["SDNCTL_RESYNC"] = "2"
        c.run("up", str(path))
        yield c


def round_specs(i: int) -> list[pb.Container]:
    sleep = ["sleep", "3600"]
    return [pb.Container(name=f"b{i}", host="h1", network="front", command=sleep),
            pb.Container(name=f"n{i}", host="h1", network="none", command=sleep),
            pb.Container(name=f"o{i}", host="h1", network="host", command=sleep),
            pb.Container(name=f"j{i}", host="h1", network=f"container:b{i}", command=sleep)]


def one_round(client: Client, i: int) -> None:
    specs = round_specs(i)
    for spec in specs:
        client.api.CreateContainer(pb.CreateContainerRequest(container=spec), timeout=10)

    def running() -> bool:
        states = [client.api.GetContainer(pb.GetRequest(name=s.name), timeout=10).status.state
                  for s in specs]
        assert "error" not in states, states
        return all(s == "running" for s in states)

    wait_for(running, 60, f"round {i} to run", 0.05)
    revision = 0
    for spec in reversed(specs):  # the joined one before its donor
        revision = client.api.DeleteContainer(pb.DeleteRequest(name=spec.name),
                                              timeout=10).revision

    def removed() -> bool:
        host = client.api.GetHost(pb.GetRequest(name="h1"), timeout=10)
        return host.agent_synced and host.observed_revision >= revision

    wait_for(removed, 60, f"round {i} to be removed", 0.05)


def agent_rss(pid: int) -> int:
    """The agent's resident memory in kB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def store_rows(cli: Cli) -> int:
    """Rows of the store, minus the bounded history and quarantines that end by themselves."""
    db = cli.run_dir / "state" / "controller.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM kv WHERE key NOT LIKE '/history/%' "
            "AND key NOT LIKE '%/quarantine/%'").fetchone()
    return int(count)


def agent_fd_targets(pid: int) -> list[str]:
    """What the agent's open file descriptors point at (for a failure's message)."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return sorted(targets)


def measure(cli: Cli, prefix: str, pid: int) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Counts of what the host holds, and what the links and the agent's fds are."""
    state = host_state(cli, prefix, rows=False)
    fds = agent_fd_targets(pid)
    copies = sum(fd.startswith(MOUNT_NS_FD) for fd in fds)
    counts = {"namespaces": len(state.netns), "links": len(state.netlink["links"]),
              "addresses": len(state.netlink["addrs"]), "routes": len(state.netlink["routes"]),
              "mounts": len(state.mounts), "cgroups": len(state.cgroups),
              "nft lines": len(state.nft.splitlines()), "agent files": len(state.files),
              "store rows": store_rows(cli), "agent fds": len(fds) - copies,
              "agent mount copies beyond one": max(0, copies - 1), "agent rss kB": agent_rss(pid)}
    return counts, {"links": state.netlink["links"], "agent fds": fds}


def round_zero_is_gone(links: list[str]) -> bool:
    """No link of round 0's containers is left. The host side of a veth goes with its
    namespace, which the kernel destroys asynchronously after the agent reported the removal
    (a loaded machine has taken a moment: a baseline of one link too many)."""
    return not any(f"sdnctl:ctr/{spec.name}/" in link for spec in round_specs(0) for link in links)


def test_churn_leaves_nothing_behind(cli: Cli, run_prefix: str) -> None:
    pid = get_host(cli).agent_pid
    rounds = max(WARMUP_ROUNDS + 4, CYCLES // MODES)
    with api(cli) as client:
        one_round(client, 0)  # first-use allocations are not leaks
        baseline: list[tuple[dict[str, int], dict[str, list[str]]]] = []

        def quiet() -> bool:
            baseline[:] = [measure(cli, run_prefix, pid)]
            return round_zero_is_gone(baseline[0][1]["links"])

        wait_for(quiet, 30, "round 0's links to be gone", 0.05)
        before, seen_before = baseline[0]
        rss = [before["agent rss kB"]]  # after each round
        started = time.monotonic()
        for i in range(1, rounds + 1):
            one_round(client, i)
            rss.append(agent_rss(pid))
        took = time.monotonic() - started
    # Back to the baseline (what the last removal leaves to a later pass included): polled,
    # with a generous bound; what still differs then is a leak.
    last: list[tuple[dict[str, int], dict[str, list[str]]]] = []

    def settled() -> bool:
        last[:] = [measure(cli, run_prefix, pid)]
        return not any(grew(k, last[0][0][k] - before[k]) for k in before)

    with contextlib.suppress(AssertionError):
        wait_for(settled, 30, "the host to be back to its baseline", 0.5)
    after, seen_after = last[0]
    assert get_host(cli).agent_pid == pid  # the same agent throughout
    deltas = {k: after[k] - before[k] for k in before}
    late = rss[WARMUP_ROUNDS:]
    per_cycle = slope(without_steps(late)) / MODES
    print(f"\nchurn: {rounds * MODES} create/delete cycles ({rounds} rounds of bridged, "
          f"closed, open, joined) in {took:.0f} s ({took / rounds * 1000:.0f} ms per round); "
          "deltas: " + ", ".join(f"{k} {v:+d}" for k, v in deltas.items())
          + f"; agent RSS slope after {WARMUP_ROUNDS} warm-up rounds: {per_cycle:.1f} kB/cycle "
          f"over {len(late) - 1} rounds ({slope(late) / MODES:.1f} with lone steps); "
          f"RSS per round (kB): {rss}")
    leaked = {k: v for k, v in deltas.items() if grew(k, v)}
    differs = {k: {"gone": sorted(set(seen_before[k]) - set(seen_after[k])),
                   "new": sorted(set(seen_after[k]) - set(seen_before[k]))}
               for k in seen_before if k in leaked}
    assert not leaked, (leaked, differs, before, after)
    assert per_cycle <= RSS_KB_PER_CYCLE, (
        f"the agent's RSS grows {per_cycle:.1f} kB per create/delete cycle after warm-up "
        f"(at most {RSS_KB_PER_CYCLE}); per round: {rss}")


def slope(samples: list[int]) -> float:
    """Least-squares slope of ``samples`` per step (0 for fewer than two)."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(samples) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(samples))
    return num / sum((x - mean_x) ** 2 for x in range(n))


def without_steps(samples: list[int]) -> list[int]:
    """``samples`` with each lone step (an increase above ``RSS_STEP_KB`` and ten times the
    median increase) taken out: an allocator's new arena, not a growth per cycle. A steady leak
    is not one: its every round grows alike, and so does the median."""
    if len(samples) < 3:
        return samples
    steps = [b - a for a, b in itertools.pairwise(samples)]
    limit = max(RSS_STEP_KB, 10 * statistics.median(abs(d) for d in steps))
    out = [samples[0]]
    for d in steps:
        out.append(out[-1] + (d if d <= limit else 0))
    return out
