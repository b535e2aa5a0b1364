"""Issue 20: container attach on a dual-stack network against an IPv4-only one (goal < 1.2x).

Design note. Like with like: the same real path on both sides, ``sdnctl run`` as
``bench/attach.py`` times it (the CreateContainer RPC, the controller's IPAM and Watch, the real
agent in a lab host making the namespace, veth, addresses, routes and nftables guards, and crun
starting the container, until the controller records the agent's report that it runs), on two
bridge networks that differ only in ``subnet6``. The dual-stack side's extra work is the IPv6
lease and address (the same transaction), the bridge's and the container's IPv6 addresses and
default route, and two more guard rules per port. Per round each side starts its containers one
by one (each timed), then deletes them (each timed); the sides alternate round by round.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

from _sdnlab import COMMAND, BenchError, SdnctlLab, become_subreaper
from harness import (
    Measurement,
    alternate_many,
    bench_args,
    comparison,
    ratio,
    summary,
    unique_prefix,
    write_result,
)

from agent.kernel.netns import netns_path, remove_netns
from sdnctl.lab.testimage import build_test_image
from sdnctl.v1 import sdnctl_pb2 as pb

#: The two networks: the same but for subnet6.
NETWORKS = {
    "IPv4-only": pb.Network(name="v4", driver="bridge", subnet="10.62.0.0/16"),
    "dual-stack": pb.Network(name="ds", driver="bridge", subnet="10.63.0.0/16",
                             subnet6="fd00:63::/48"),
}


class Bench:
    def __init__(self, prefix: str, workdir: str, n: int) -> None:
        self.n, self.seq = n, 0
        self.sdn = SdnctlLab(prefix, workdir, ("h0",))
        self.image = ""
        self.samples: dict[str, tuple[list[float], list[float]]] = {
            side: ([], []) for side in NETWORKS}

    def setup(self, archive: str) -> None:
        self.sdn.setup()
        for network in NETWORKS.values():
            self.sdn.create_network(network)
        self.image = self.sdn.load_image(archive)
        for side in NETWORKS:  # the image unpacked, each bridge made: untimed
            self.sdn.start(self._container("warm-" + NETWORKS[side].name, side))
            self.sdn.delete("warm-" + NETWORKS[side].name)

    def _container(self, name: str, side: str) -> pb.Container:
        return pb.Container(name=name, host="h0", network=NETWORKS[side].name, image=self.image,
                            command=list(COMMAND), user_ns=pb.USERNS_HOST)

    def round(self, side: str) -> list[float]:
        setup, teardown = self.samples[side]
        names = []
        try:
            for _ in range(self.n):
                self.seq += 1
                names.append(f"c{self.seq}")
                setup.append(self.sdn.start(self._container(names[-1], side))[2])
            while names:
                teardown.append(self.sdn.delete(names[0]))
                names.pop(0)
        finally:
            for name in names:
                with contextlib.suppress(Exception):
                    self.sdn.delete(name)
        return []


def main() -> int:
    args = bench_args(__doc__.splitlines()[0])
    n = int(os.environ.get("DUALSTACK_CONTAINERS", 10 if args.quick else 30))
    rounds = 4 if args.quick else 6
    prefix = unique_prefix("d")
    workdir = tempfile.mkdtemp(prefix=f"{prefix}-", dir="/run")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    become_subreaper()
    bench = Bench(prefix, workdir, n)
    try:
        archive = os.path.join(workdir, "image.tar")
        build_test_image(archive)
        bench.setup(archive)
        alternate_many({side: lambda side=side: bench.round(side)  # type: ignore[misc]
                        for side in NETWORKS}, rounds)
        ms: dict[str, Measurement] = {}
        for side, (setup, teardown) in bench.samples.items():
            ms[f"{side} setup"] = Measurement(f"sdnctl run {side} setup", "ms", setup)
            ms[f"{side} teardown"] = Measurement(f"sdnctl run {side} teardown", "ms", teardown)
        comps = []
        for phase in ("setup", "teardown"):
            value = ratio(ms[f"dual-stack {phase}"].samples, ms[f"IPv4-only {phase}"].samples)
            comps.append(comparison(f"sdnctl run dual-stack/IPv4-only {phase}", value, "< 1.2",
                                    value < 1.2))
        doc: dict[str, Any] = {
            "mode": "quick" if args.quick else "full",
            "params": {"containers": n, "rounds": rounds},
            "measurements": list(ms.values()), "comparisons": comps,
            "notes": [f"per container, {n} per round, {rounds} alternating rounds per side; "
                      "the same image, command and network options but subnet6"]}
        for m in ms.values():
            med, p10, p90 = summary(m.samples)
            print(f"{m.name:40} median {med:8.2f} ms  p10 {p10:8.2f}  p90 {p90:8.2f}")
        for c in comps:
            print(f"{c['name']:50} {c['value']:6.2f}  target {c['target']}  met {c['met']}")
        write_result("dualstack", doc)
    finally:
        bench.sdn.close()
        for path in glob.glob(netns_path(f"{prefix}*")):
            remove_netns(path)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, OSError) as e:
        print(f"bench/dualstack.py: error: {e}", file=sys.stderr)
        sys.exit(1)
