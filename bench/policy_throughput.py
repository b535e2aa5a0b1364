"""Issue 22: throughput with 100 network policies loaded against none, in rounds long enough to
see a few per cent.

Design note. The lab is ``bench/policy.py``'s (``PolicyBench``: the controller in this process,
the real agent in each lab host, two containers of one bridge on h0: an iperf3 server ``srv``
labelled ``app=db``, a client ``cli`` labelled ``app=web``), with 2 hosts: the figure is about
one host's forward path, not about how many hosts hold the set. One side runs with no policy,
the other with 100 policies that all select ``srv``, each allowing ``app=web`` on its own port,
the one iperf3 uses last (the worst place for the connection's first packet). Between rounds
the 100 policies are created or deleted and every agent is awaited, so each round measures the
table it claims to.

Two-second rounds on the shared two-core machine gave ratios of 0.92 to 1.27: a neighbour's
burst decides a short round. So each round is one TCP stream for ``SECONDS`` (the first one
omitted: slow start), the sides alternate A, B, B, A, ... over ``ROUNDS`` rounds, and the figure
is the median of the per-round ratios (``harness.paired_ratio``): each pair shared its moment.
``--full`` takes more and longer rounds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from _sdnlab import BenchError
from harness import Measurement, alternate, bench_args, comparison, paired_ratio, write_result
from policy import POLICIES, PolicyBench, many_policies

HOSTS = 2
#: Both iperf3 ends run at this priority: on the shared two-core machine (load averages of 10
#: to 50 while other work runs) a stream at the default priority gets whatever share the
#: neighbours leave, which changed 7-fold from one 10-s round to the next.
NICE = -10


def main() -> int:
    args = bench_args(__doc__.splitlines()[0])
    rounds, seconds = (10, 5) if args.quick else (16, 10)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    prefix = f"pb{os.getpid() % 100000:05d}"  # this benchmark's namespaces
    workdir = tempfile.mkdtemp(prefix=f"{prefix}-", dir="/run")
    b = PolicyBench(prefix, workdir, HOSTS)
    try:
        b.build()

        def without() -> float:
            b.wait_all(b.delete_policies(), time.perf_counter())
            return b.iperf(seconds, omit=1, nice=NICE)

        def with_many() -> float:
            b.wait_all(b.create_policies(many_policies(POLICIES)), time.perf_counter())
            return b.iperf(seconds, omit=1, nice=NICE)

        none, loaded = alternate(without, with_many, rounds)
        ratios = [x / y for x, y in zip(loaded, none, strict=True)]
        r = paired_ratio(loaded, none)
        print(f"throughput: none {none} with {POLICIES} {loaded} ratio {r:.3f}")
        ms: list[Measurement] = [
            Measurement("throughput, no policy", "Gbit/s", none),
            Measurement(f"throughput, {POLICIES} policies", "Gbit/s", loaded),
            Measurement(f"throughput ratio per round, {POLICIES} policies/none", "ratio", ratios)]
        comps: list[dict[str, Any]] = [
            comparison(f"throughput {POLICIES} policies/none (median of rounds)", r, ">= 0.95",
                       r >= 0.95)]
        write_result("policy_throughput", {
            "params": {"hosts": HOSTS, "rounds": rounds, "seconds": seconds,
                       "policies": POLICIES, "nice": NICE},
            "measurements": ms, "comparisons": comps,
            "notes": [f"iperf3, one TCP stream for {seconds} s (+1 s omitted) between two "
                      f"containers of one bridge, both ends at nice {NICE}; {rounds} rounds per "
                      "side, alternating A,B,B,A; "
                      f"{POLICIES} policies selecting the server, the allowing rule last; "
                      "ratio: the median of the per-round ratios"]})
    finally:
        b.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        print(f"bench/policy_throughput.py: error: {e}", file=sys.stderr)
        sys.exit(1)
