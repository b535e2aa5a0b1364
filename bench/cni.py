"""Issue 17: CNI ADD and DEL wall time, sdnctl's plugin vs the reference bridge + host-local.

Design note. `sdnctl up` brings up one lab host (its controller and agent, as a user would) with
a bridge network ``front``; both plugins are exec'd by the same libcni-like driver the spec tests
use (tests/netns/helpers/cnidriver.py: environment, config on stdin, stdout parsed), through
``nsenter --net`` into that lab host's namespace, where a runtime would run them. Per round,
each side (alternating, A B B A ...) gets a fresh container namespace (made untimed, as the
runtime's cost), one timed ADD, one timed DEL, and the namespace is removed. sdnctl's plugin
is the one the set-up installs (the C shim, sdnctl/cni/shim.c). Its ADD is a whole
attachment: the shim's process, the agent, the controller's record and address, the agent
building the veth and its firewall guard (the fast path: between two passes, no Watch round
trip; the first ADD of a run, which brings the network to the host, waits for a pass), and the
answer; its DEL the controller forgetting it (the agent removes the veth right after
answering). The reference bridge plugin builds the veth and host-local writes its address
file; its DEL removes the veth before answering. VERSION is timed too: sdnctl's goes through
the shim to the Python plugin (the slow path, left to Python on purpose).

Then, in the same lab, issue 21's per-container figure: `sdnctl up` of the same file with
``UP_CONTAINERS`` containers added on the lab host (`sleep infinity`, bridged on ``front``), as
a user runs it (the CLI's process, its CreateContainers request, the agent's pass that starts
them, up to four at once, until every one runs and the host reports them), its wall time
divided by the count (the median of 3 rounds, 5 in the full run, each followed by an untimed
`rm` of the 50), against the reference bridge plugin's ADD of this run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import (
    Measurement,
    Timer,
    alternate_many,
    bench_args,
    comparison,
    ratio,
    summary,
    unique_prefix,
    write_result,
)

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "netns")]

from helpers.cli import lab_cli  # noqa: E402
from helpers.cnidriver import Driver, make_cni_path  # noqa: E402

from agent.kernel.netns import create_netns, netns_path, remove_netns  # noqa: E402
from sdnctl.lab import lab  # noqa: E402

TOPOLOGY = """\
name: cnibench
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, driver: bridge, subnet: 10.72.0.0/16}
containers: []
"""
#: Issue 21: `up` of this many containers on one host costs no more per container than the
#: bridge plugin's ADD.
UP_CONTAINERS = 50
#: Rounds of that `up` (each followed by an untimed `rm` of the 50): quick, full.
UP_ROUNDS = {True: 3, False: 5}


def main() -> int:
    args = bench_args(__doc__.splitlines()[0])
    rounds = 20 if args.quick else 100
    prefix = unique_prefix("c")
    work = Path(tempfile.mkdtemp(prefix=f"sdnctl-bench-{prefix}-"))
    try:
        (work / "t.yaml").write_text(TOPOLOGY)
        with lab_cli(prefix) as cli:
            cli.run("up", str(work / "t.yaml"), "--timeout", "60")
            host = lab.Lab(prefix).host_netns("h1")
            drv = Driver(make_cni_path(work / "bin", ("bridge", "host-local")), run_in=host)
            confs: dict[str, dict[str, Any]] = {
                "sdnctl": {"cniVersion": "1.0.0", "name": "front", "type": "sdnctl",
                           "network": "front"},
                "bridge": {"cniVersion": "1.0.0", "name": "ref", "type": "bridge",
                           "bridge": "cniref0", "isGateway": True, "ipMasq": False,
                           "ipam": {"type": "host-local", "subnet": "10.73.0.0/16",
                                    "dataDir": str(work / "ipam")}}}
            samples: dict[str, dict[str, list[float]]] = {
                side: {"ADD": [], "DEL": [], "VERSION": []} for side in confs}
            count = [0]

            def side(name: str) -> Callable[[], list[float]]:
                def run() -> list[float]:
                    count[0] += 1
                    cid = f"bench{count[0]}"
                    ns = netns_path(f"{prefix}c{count[0]}")
                    create_netns(ns)
                    try:
                        with Timer() as t:
                            drv.call(confs[name], "ADD", container_id=cid, netns=ns)
                        samples[name]["ADD"].append(t.ms)
                        with Timer() as t:
                            drv.call(confs[name], "DEL", container_id=cid, netns=ns)
                        samples[name]["DEL"].append(t.ms)
                        with Timer() as t:
                            drv.version(confs[name]["type"])
                        samples[name]["VERSION"].append(t.ms)
                    finally:
                        remove_netns(ns)
                    return []
                return run

            alternate_many({name: side(name) for name in confs}, rounds)
            many = work / "t50.yaml"
            names = [f"u{i}" for i in range(UP_CONTAINERS)]
            many.write_text(TOPOLOGY.replace("containers: []", "containers:\n" + "".join(
                f"  - {{name: {name}, host: h1, network: front, command: [sleep, infinity]}}\n"
                for name in names)))
            up_ms: list[float] = []
            for _ in range(UP_ROUNDS[args.quick]):
                with Timer() as t:
                    cli.run("up", str(many), "--timeout", "300", timeout=360)
                up_ms.append(t.ms)
                cli.run("rm", *names, timeout=360)  # (untimed: the next round starts anew)
    finally:
        with contextlib.suppress(Exception):
            shutil.rmtree(work, ignore_errors=True)
    ms = [Measurement(f"{name} {op}", "ms", values)
          for name, ops in samples.items() for op, values in ops.items()]
    ms.append(Measurement(f"sdnctl up of {UP_CONTAINERS} containers on one host", "ms", up_ms))
    by = {m.name: m.samples for m in ms}
    per_container = summary(up_ms)[0] / UP_CONTAINERS
    bridge_add = summary(by["bridge ADD"])[0]
    comps = [comparison("sdnctl/bridge ADD", ratio(by["sdnctl ADD"], by["bridge ADD"]), "<= 1",
                        ratio(by["sdnctl ADD"], by["bridge ADD"]) <= 1),
             comparison("sdnctl/bridge DEL", ratio(by["sdnctl DEL"], by["bridge DEL"]), "< 1",
                        ratio(by["sdnctl DEL"], by["bridge DEL"]) < 1),
             comparison("sdnctl/bridge VERSION", ratio(by["sdnctl VERSION"],
                                                       by["bridge VERSION"]), "", None),
             comparison(f"sdnctl up of {UP_CONTAINERS}, per container / bridge ADD",
                        per_container / bridge_add, "<= 1 (issue 21)",
                        per_container <= bridge_add)]
    for m in ms:
        med, p10, p90 = summary(m.samples)
        print(f"{m.name:18} median {med:8.2f} ms  p10 {p10:8.2f}  p90 {p90:8.2f}")
    for c in comps:
        print(f"{c['name']:24} {c['value']:6.2f}  target {c['target'] or '-':5} met {c['met']}")
    write_result("cni", {"mode": "quick" if args.quick else "full",
                         "params": {"rounds": rounds, "cniVersion": "1.0.0",
                                    "up_containers": UP_CONTAINERS},
                         "measurements": ms, "comparisons": comps,
                         "notes": ["wall time per call through nsenter into a lab host "
                                   "(both sides alike); sdnctl ADD waits for the controller's "
                                   "record and the agent's veth and guard; sdnctl DEL for the "
                                   "controller only (the veth goes right after)",
                                   f"pid {os.getpid()}"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
