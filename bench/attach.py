"""Issue 8 item 1: network attach per container, sdnctl vs CNI vs the kernel floor.

Design note. Everything happens inside a host namespace of our own (``/run/netns/<prefix>-h``);
each side gets its own bridge and /16 there. Per round, each side attaches N containers one by
one (each timed), then detaches them (each timed); sides alternate round by round.

- sdnctl: what the agent does: ``create_netns`` for the container, then
  ``Links.ensure_veth`` into a bridge made by ``Links.ensure_bridge`` (peer born in the
  namespace, alias, MAC, address, default route). Teardown as the agent: ``forget_netns`` +
  ``remove_netns`` (the veth goes with the namespace).
- CNI: the reference ``bridge`` + ``host-local`` plugins, exec'd as libcni does (CNI_COMMAND,
  CNI_NETNS, CNI_IFNAME, CNI_PATH, config on stdin) through ``nsenter --net`` into the host
  namespace, with and without ``ipMasq``. The namespace is made in-process with ``create_netns``
  (a runtime's cost, not CNI's); DEL, then ``remove_netns``.
- floor: ``ip``: one ``ip -batch`` adding the N namespaces, one ``ip -n HOST -batch`` adding the
  N veths with the peer born in the container namespace (``peer name eth0 netns C``), master and
  up, and per container one ``ip -n C -batch`` for address, up and default route. The two batch
  files are shared by the round: their time is spread evenly over its containers. Teardown: one
  ``ip -batch`` of ``netns del``.

Namespace destruction finishes asynchronously in the kernel (the veths go in a workqueue); after
each teardown we wait, untimed, until the host namespace holds no more of that side's veths, so
that one side's cleanup does not slow the next side down.
"""

from __future__ import annotations

import cProfile
import glob
import io
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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

from agent.kernel.links import Links
from agent.kernel.netns import create_netns, netns_path, remove_netns
from agent.names import bridge_alias, bridge_name, container_mac, veth_alias, veth_name

CNI_DIR = "/usr/lib/cni"
Round = Callable[[], tuple[list[float], list[float]]]
MTU = 1500


def _addr(net: int, i: int) -> tuple[str, str]:
    """(address/16, gateway) of container ``i`` in 10.<net>.0.0/16."""
    return f"10.{net}.{i // 250}.{i % 250 + 2}/16", f"10.{net}.0.1"


def _run(argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"could not run {argv[:4]}: {proc.stdout} {proc.stderr}".strip())
    return proc.stdout


class Bench:
    def __init__(self, prefix: str, n: int, workdir: str) -> None:
        self.prefix, self.n, self.workdir = prefix, n, workdir
        self.host = netns_path(f"{prefix}-h")
        create_netns(self.host)
        self.links = Links(self.host)
        self.network = f"{prefix}-net"
        self.bridge = bridge_name(self.network)
        self.links.ensure_bridge(self.bridge, bridge_alias(self.network), "10.71.0.1/16", MTU)
        _run(["ip", "-n", f"{prefix}-h", "-batch", "-"], stdin=(
            "link add bflr type bridge\naddr add 10.72.0.1/16 dev bflr\nlink set bflr up\n"))
        self.ctr_dir = os.path.join(workdir, "netns")
        os.makedirs(self.ctr_dir)
        self.cni_configs = {masq: self._cni_config(masq) for masq in (False, True)}

    # --- sdnctl ---------------------------------------------------------------------------

    def _ctr(self, side: str, i: int) -> str:
        return f"{self.prefix}{side}{i}"

    def sdnctl_round(self, settle: bool = True) -> tuple[list[float], list[float]]:
        setup, teardown = [], []
        paths = [os.path.join(self.ctr_dir, self._ctr("s", i)) for i in range(self.n)]
        for i, path in enumerate(paths):
            name = self._ctr("s", i)
            cidr, gw = _addr(71, i)
            with Timer() as t:
                create_netns(path)
                self.links.ensure_veth(veth_name(name, "eth0"), veth_alias(name, "eth0"),
                                       self.bridge, MTU, path, "eth0", cidr, gw,
                                       mac=container_mac(cidr.split("/")[0]))
            setup.append(t.ms)
        for path in paths:
            with Timer() as t:
                self.links.forget_netns(path)
                remove_netns(path)
            teardown.append(t.ms)
        if settle:
            self._settle("sdnv")
        return setup, teardown

    # --- CNI ------------------------------------------------------------------------------

    def _cni_config(self, masq: bool) -> str:
        net = 74 if masq else 73
        return json.dumps({
            "cniVersion": "1.0.0", "name": f"{self.prefix}{'m' if masq else 'c'}",
            "type": "bridge", "bridge": f"bcni{int(masq)}", "isGateway": True, "ipMasq": masq,
            "mtu": MTU,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": f"10.{net}.0.0/16"}]],
                     "routes": [{"dst": "0.0.0.0/0"}],
                     "dataDir": os.path.join(self.workdir, f"ipam{int(masq)}")},
        })

    def _cni(self, command: str, masq: bool, cid: str, path: str) -> None:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": path,
               "CNI_IFNAME": "eth0", "CNI_PATH": CNI_DIR,
               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        _run(["nsenter", f"--net={self.host}", os.path.join(CNI_DIR, "bridge")],
             stdin=self.cni_configs[masq], env=env)

    def cni_round(self, masq: bool) -> tuple[list[float], list[float]]:
        side = "m" if masq else "c"
        setup, teardown = [], []
        ids = [self._ctr(side, i) for i in range(self.n)]
        paths = [os.path.join(self.ctr_dir, cid) for cid in ids]
        try:
            for cid, path in zip(ids, paths, strict=True):
                with Timer() as t:
                    create_netns(path)
                    self._cni("ADD", masq, cid, path)
                setup.append(t.ms)
            for cid, path in zip(ids, paths, strict=True):
                with Timer() as t:
                    self._cni("DEL", masq, cid, path)
                    remove_netns(path)
                teardown.append(t.ms)
        finally:
            for path in paths:
                remove_netns(path)
        self._settle("veth")
        return setup, teardown

    # --- floor ----------------------------------------------------------------------------

    def floor_round(self) -> tuple[list[float], list[float]]:
        names = [self._ctr("f", i) for i in range(self.n)]
        try:
            with Timer() as t_ns:
                _run(["ip", "-batch", "-"], stdin="".join(f"netns add {c}\n" for c in names))
            veths = "".join(f"link add v{c} mtu {MTU} master bflr up type veth peer name eth0 "
                            f"netns {c}\n" for c in names)
            with Timer() as t_host:
                _run(["ip", "-n", f"{self.prefix}-h", "-batch", "-"], stdin=veths)
            shared = (t_ns.ms + t_host.ms) / self.n
            setup = []
            for i, c in enumerate(names):
                cidr, gw = _addr(72, i)
                with Timer() as t:
                    _run(["ip", "-n", c, "-batch", "-"], stdin=(
                        f"link set lo up\naddr add {cidr} dev eth0\nlink set eth0 up\n"
                        f"route add default via {gw}\n"))
                setup.append(shared + t.ms)
            with Timer() as t_del:
                _run(["ip", "-batch", "-"], stdin="".join(f"netns del {c}\n" for c in names))
        finally:
            for c in names:
                remove_netns(netns_path(c))
        self._settle(f"v{self.prefix}")
        return setup, [t_del.ms / self.n] * self.n

    def _settle(self, ifprefix: str, timeout: float = 60.0) -> None:
        """Wait (untimed) until the kernel has really removed the side's host-side veths."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = [link for link in self.links._host.get_links()
                    if (link.get_attr("IFLA_IFNAME") or "").startswith(ifprefix)]
            if not left:
                return
            time.sleep(0.05)

    def close(self) -> None:
        self.links.close()


def cleanup(prefix: str, workdir: str) -> None:
    """Remove every namespace of this run (ours by prefix), then the work directory."""
    for path in glob.glob(os.path.join(workdir, "netns", "*")):
        remove_netns(path)
    for path in glob.glob(netns_path(f"{prefix}*")):
        remove_netns(path)
    shutil.rmtree(workdir, ignore_errors=True)


def profile_sdnctl(bench: Bench) -> dict[str, list[str]]:
    """One sdnctl round under cProfile: top 10 by own time, and sdnctl's own functions by
    cumulative time (where in the agent's path the time goes)."""
    prof = cProfile.Profile()
    prof.enable()
    bench.sdnctl_round(settle=False)
    prof.disable()
    bench._settle("sdnv")

    def top(sort: str, *restrict: Any) -> list[str]:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats(sort).print_stats(*restrict)
        lines = out.getvalue().splitlines()
        total = next((ln.strip() for ln in lines if "function calls" in ln), "")
        start = next((i for i, ln in enumerate(lines) if ln.strip().startswith("ncalls")), 0)
        return [total] + [ln.rstrip() for ln in lines[start:start + 11] if ln.strip()]

    return {"by_tottime": top("tottime", 10),
            "agent_by_cumtime": top("cumulative", "agent/kernel", 10)}


def main() -> int:
    args = bench_args(__doc__.splitlines()[0])
    n = int(os.environ.get("ATTACH_N", 100 if args.quick else 1000))
    rounds = 3 if args.quick else 2
    prefix = unique_prefix("a")
    workdir = tempfile.mkdtemp(prefix=f"{prefix}-", dir="/run")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench: Bench | None = None
    try:
        bench = Bench(prefix, n, workdir)
        b = bench
        results: dict[str, list[tuple[list[float], list[float]]]] = {}

        def side(name: str, fn: Round) -> Callable[[], list[float]]:
            def run() -> list[float]:
                results.setdefault(name, []).append(fn())
                return []
            return run

        alternate_many({"sdnctl": side("sdnctl", b.sdnctl_round),
                        "floor": side("floor", b.floor_round),
                        "cni": side("cni", lambda: b.cni_round(False)),
                        "cni+masq": side("cni+masq", lambda: b.cni_round(True))}, rounds)
        ms: dict[str, Measurement] = {}
        for name, per_round in results.items():
            ms[f"{name} setup"] = Measurement(f"{name} setup", "ms",
                                              [x for s, _ in per_round for x in s])
            ms[f"{name} teardown"] = Measurement(f"{name} teardown", "ms",
                                                 [x for _, t in per_round for x in t])
            ms[f"{name} total"] = Measurement(f"{name} total", "ms", [
                s + t for sr, tr in per_round for s, t in zip(sr, tr, strict=True)])
        comps = []
        for phase in ("setup", "teardown", "total"):
            sd = ms[f"sdnctl {phase}"].samples
            r_floor = ratio(sd, ms[f"floor {phase}"].samples)
            r_cni = ratio(ms[f"cni {phase}"].samples, sd)
            r_masq = ratio(ms[f"cni+masq {phase}"].samples, sd)
            comps += [comparison(f"sdnctl/floor {phase}", r_floor, "<= 1.3", r_floor <= 1.3),
                      comparison(f"cni/sdnctl {phase}", r_cni, ">= 3", r_cni >= 3),
                      comparison(f"cni+masq/sdnctl {phase}", r_masq, "", None)]
        doc: dict[str, Any] = {"mode": "quick" if args.quick else "full",
                               "params": {"containers": n, "rounds": rounds},
                               "measurements": list(ms.values()), "comparisons": comps,
                               "notes": [f"per container, N={n} on one host namespace, "
                                         f"{rounds} alternating rounds per side; setup "
                                         "includes making the container namespace"]}
        missed = [c for c in comps if c["met"] is False]
        for m in ms.values():
            med, p10, p90 = summary(m.samples)
            print(f"{m.name:22} median {med:8.2f} ms  p10 {p10:8.2f}  p90 {p90:8.2f}")
        for c in comps:
            print(f"{c['name']:28} {c['value']:6.2f}  target {c['target'] or '-':6} "
                  f"met {c['met']}")
        if missed:
            doc["profile"] = profile_sdnctl(b)
            print("sdnctl missed a target; cProfile of one round (top 10 by own time):")
            for key, lines in doc["profile"].items():
                print(f"-- {key}")
                print("\n".join(lines))
        write_result("attach", doc)
    finally:
        if bench is not None:
            bench.close()
        cleanup(prefix, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
