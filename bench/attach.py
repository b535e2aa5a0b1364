"""Issue 8 item 1: network attach per container: sdnctl vs CNI vs the kernel floor.

Design note. Two pairs of sides compare like with like, one figure is a floor, and one is the
library alone, all alternating round by round (``harness.alternate_many``). Per round, each side
attaches its containers one by one (each timed), then detaches them (each timed).

Whole containers (the same image, the same command, one process each):

- sdnctl run: sdnctl's real per-container path, what `sdnctl run --network NET` does: the
  CreateContainer RPC, the controller's IPAM and Watch, the real agent (a process in a lab host)
  making the namespace, veth, addresses, route and nftables guard (and NAT) with netlink and nft,
  and starting the container with crun, until the controller *records* the agent's report that
  it runs (``_sdnlab.Reports``: nothing polls). Teardown: DeleteContainer until the agent
  reports the revision realised. Two networks: ``masquerade`` on (NAT) and off. The containers
  run without a user namespace (``--userns host``), as the CNI side's do. The CLI's own process
  is not timed here (bench/start.py times `sdnctl run` whole).
- CNI + crun: what a CNI runtime does for one container: make the namespace, exec the
  reference ``bridge`` plugin (``host-local`` IPAM) as libcni does: from a runtime process that
  lives in the host namespace (started once, as containerd is), with CNI_COMMAND, CNI_NETNS,
  CNI_IFNAME, CNI_PATH and the config on stdin, no ``nsenter`` per call; then one ``crun run -d``
  of the container joining that namespace (``_sdnlab.BareCrun``: the agent's runtime call and
  config.json). ``ipMasq`` on and off. Teardown: ``crun delete --force``, CNI DEL, the namespace.

Network only:

- CNI ADD: the same plugin exec with a new namespace, no container (the network part of the
  line above).
- sdnctl library (in-process): the agent's kernel calls alone, called from this process:
  ``create_netns`` + ``Links.add_veth`` into an ``ensure_bridge`` bridge, what a pass starting a
  container calls for its new pair (``Links.ensure_veth``, which reads back, verifies and
  repairs a pair that exists, is what it calls only for one that does). No API, no IPAM, no
  nftables, no agent: the cost of our netlink code, not of sdnctl. Teardown ``forget_netns`` +
  ``remove_netns``.
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

import contextlib
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

from _sdnlab import COMMAND, BareCrun, BenchError, SdnctlLab, become_subreaper
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
from sdnctl.lab.testimage import build_test_image
from sdnctl.v1 import sdnctl_pb2 as pb

CNI_DIR = "/usr/lib/cni"
Round = Callable[[], tuple[list[float], list[float]]]
MTU = 1500
#: sdnctl's two networks: NAT (masquerade) on and off.
SDN_NETS = {True: "an", False: "ap"}
#: The CNI runtime: a process living in the host namespace that execs a plugin per request
#: (one JSON line in: argv, env, stdin; one out: exit code, stdout, stderr), as libcni does from
#: containerd's process.
CNI_RUNTIME = r"""
import json, subprocess, sys
for line in sys.stdin:
    req = json.loads(line)
    done = subprocess.run(req["argv"], input=req["stdin"], env=req["env"],
                          capture_output=True, text=True)
    print(json.dumps({"rc": done.returncode, "out": done.stdout, "err": done.stderr}),
          flush=True)
"""


def _addr(net: int, i: int) -> tuple[str, str]:
    """(address/16, gateway) of container ``i`` in 10.<net>.0.0/16."""
    return f"10.{net}.{i // 250}.{i % 250 + 2}/16", f"10.{net}.0.1"


def _run(argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"could not run {argv[:4]}: {proc.stdout} {proc.stderr}".strip())
    return proc.stdout


class CniRuntime:
    """Execs CNI plugins from a process in the host namespace (see ``CNI_RUNTIME``)."""

    def __init__(self, host: str) -> None:
        if not os.access(os.path.join(CNI_DIR, "bridge"), os.X_OK):
            raise BenchError(f"{CNI_DIR}/bridge missing (bench/setup.sh installs "
                             "containernetworking-plugins)")
        self.proc = subprocess.Popen(["nsenter", f"--net={host}", "--", sys.executable, "-I",
                                      "-c", CNI_RUNTIME], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def exec(self, plugin: str, env: dict[str, str], config: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"argv": [os.path.join(CNI_DIR, plugin)], "env": env,
                                          "stdin": config}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"the CNI runtime process exited ({self.proc.poll()})")
        got = json.loads(line)
        if got["rc"] != 0:
            raise BenchError(f"CNI {env.get('CNI_COMMAND')} {plugin}: exit {got['rc']}: "
                             f"{got['out']} {got['err']}".strip())
        return str(got["out"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Bench:
    def __init__(self, prefix: str, n_net: int, n_ctr: int, workdir: str) -> None:
        self.prefix, self.n, self.n_ctr, self.workdir = prefix, n_net, n_ctr, workdir
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
        # ADD only on 10.73/10.74, ADD + crun on 10.75/10.76 (without/with ipMasq)
        self.cni_configs = {(crun, masq): self._cni_config(crun, masq)
                            for crun in (False, True) for masq in (False, True)}
        self.cni = CniRuntime(self.host)
        self.crun = BareCrun(prefix, workdir)
        self.sdn = SdnctlLab(prefix, workdir, ("h0",))
        self.seq = 0
        self.revisions: dict[bool, list[int]] = {True: [], False: []}

    def setup(self, archive: str) -> None:
        """The container sides: bare crun's image, sdnctl's lab, its networks and image; one
        start (the agent fetches and unpacks the image) and removal, untimed."""
        self.crun.setup(archive)
        self.sdn.setup()
        for masq, name in SDN_NETS.items():
            self.sdn.create_network(pb.Network(name=name, driver="bridge",
                                               subnet=f"10.{60 + masq}.0.0/16",
                                               masquerade=masq))
        self.image = self.sdn.load_image(archive)
        self.sdn.start(self._sdn_container("warmup", True))
        self.sdn.delete("warmup")
        self.lab_links = Links(self.sdn.hosts["h0"].netns)

    # --- sdnctl: the real path -------------------------------------------------------------

    def _sdn_container(self, name: str, masq: bool) -> pb.Container:
        # No user namespace (sdnctl's default gives an image container one): the CNI side's
        # bare crun runs none, and this benchmark is about the network.
        return pb.Container(name=name, host="h0", network=SDN_NETS[masq], image=self.image,
                            command=list(COMMAND), user_ns=pb.USERNS_HOST)

    def sdnctl_run_round(self, masq: bool) -> tuple[list[float], list[float]]:
        setup, teardown, names = [], [], []
        try:
            for _ in range(self.n_ctr):
                self.seq += 1
                names.append(f"a{self.seq}")
                revision, _, ms = self.sdn.start(self._sdn_container(names[-1], masq))
                self.revisions[masq].append(revision)
                setup.append(ms)
            while names:
                teardown.append(self.sdn.delete(names[0]))
                names.pop(0)
        finally:
            for name in names:
                with contextlib.suppress(Exception):
                    self.sdn.delete(name)
        self._settle("sdnv", self.lab_links)
        return setup, teardown

    def agent_passes(self, masq: bool) -> list[float]:
        """The agent's reconciliation pass (from its log) of each timed start."""
        passes = self.sdn.pass_times("h0")
        out = []
        for revision in self.revisions[masq]:
            realised = [r for r in passes if r >= revision]
            if realised:
                out.append(passes[min(realised)])
        return out

    # --- sdnctl: the library alone --------------------------------------------------------

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
                self.links.add_veth(veth_name(name, "eth0"), veth_alias(name, "eth0"),
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

    def _cni_config(self, crun: bool, masq: bool) -> str:
        net = 73 + 2 * crun + masq
        return json.dumps({
            "cniVersion": "1.0.0", "name": f"{self.prefix}n{net}",
            "type": "bridge", "bridge": f"bcni{net}", "isGateway": True, "ipMasq": masq,
            "mtu": MTU,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": f"10.{net}.0.0/16"}]],
                     "routes": [{"dst": "0.0.0.0/0"}],
                     "dataDir": os.path.join(self.workdir, f"ipam{net}")},
        })

    def _cni(self, command: str, crun: bool, masq: bool, cid: str, path: str) -> None:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": path,
               "CNI_IFNAME": "eth0", "CNI_PATH": CNI_DIR,
               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        self.cni.exec("bridge", env, self.cni_configs[crun, masq])

    def cni_round(self, masq: bool, crun: bool = False) -> tuple[list[float], list[float]]:
        """CNI ADD (and with ``crun``, a container started in the namespace), then DEL."""
        side = ("k" if crun else "c") + ("m" if masq else "p")
        setup, teardown = [], []
        ids = [self._ctr(side, i) for i in range(self.n_ctr if crun else self.n)]
        paths = [os.path.join(self.ctr_dir, cid) for cid in ids]
        started: dict[str, str] = {}
        try:
            for cid, path in zip(ids, paths, strict=True):
                with Timer() as t:
                    create_netns(path)
                    self._cni("ADD", crun, masq, cid, path)
                    if crun:
                        started[cid] = self.crun.start(path, cid)[0]
                setup.append(t.ms)
            for cid, path in zip(ids, paths, strict=True):
                with Timer() as t:
                    if crun:
                        self.crun.delete(started.pop(cid))
                    self._cni("DEL", crun, masq, cid, path)
                    remove_netns(path)
                teardown.append(t.ms)
        finally:
            for cid in started.values():
                with contextlib.suppress(Exception):
                    self.crun.delete(cid)
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

    def _settle(self, ifprefix: str, links: Links | None = None, timeout: float = 60.0) -> None:
        """Wait (untimed) until the kernel has really removed the side's host-side veths."""
        host = (links or self.links)._reader
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = [link for link in host.links() if link.ifname.startswith(ifprefix)]
            if not left:
                return
            time.sleep(0.05)

    def close(self) -> None:
        """Undo everything, each step even if an earlier one failed."""
        steps: list[Callable[[], None]] = [self.cni.close, self.crun.close, self.sdn.close,
                                           self.links.close]
        if hasattr(self, "lab_links"):
            steps.insert(0, self.lab_links.close)
        for step in steps:
            try:
                step()
            except Exception as e:  # keep cleaning up
                print(f"cleanup: {e}", file=sys.stderr)


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
    n_net = int(os.environ.get("ATTACH_N", 50 if args.quick else 200))
    n_ctr = int(os.environ.get("ATTACH_CONTAINERS", 5 if args.quick else 20))
    rounds = 2 if args.quick else 3
    prefix = unique_prefix("a")
    workdir = tempfile.mkdtemp(prefix=f"{prefix}-", dir="/run")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    become_subreaper()
    bench: Bench | None = None
    try:
        bench = Bench(prefix, n_net, n_ctr, workdir)
        b = bench
        archive = os.path.join(workdir, "image.tar")
        build_test_image(archive)
        b.setup(archive)
        results: dict[str, list[tuple[list[float], list[float]]]] = {}

        def side(name: str, fn: Round) -> Callable[[], list[float]]:
            def run() -> list[float]:
                results.setdefault(name, []).append(fn())
                return []
            return run

        alternate_many({
            "sdnctl run": side("sdnctl run", lambda: b.sdnctl_run_round(True)),
            "cni+crun": side("cni+crun", lambda: b.cni_round(True, crun=True)),
            "sdnctl run, no NAT": side("sdnctl run, no NAT", lambda: b.sdnctl_run_round(False)),
            "cni+crun, no masq": side("cni+crun, no masq",
                                      lambda: b.cni_round(False, crun=True)),
            "sdnctl library (in-process)": side("sdnctl library (in-process)", b.sdnctl_round),
            "floor": side("floor", b.floor_round),
            "cni": side("cni", lambda: b.cni_round(True)),
            "cni, no masq": side("cni, no masq", lambda: b.cni_round(False)),
        }, rounds)
        ms: dict[str, Measurement] = {}
        for name, per_round in results.items():
            ms[f"{name} setup"] = Measurement(f"{name} setup", "ms",
                                              [x for s, _ in per_round for x in s])
            ms[f"{name} teardown"] = Measurement(f"{name} teardown", "ms",
                                                 [x for _, t in per_round for x in t])
            ms[f"{name} total"] = Measurement(f"{name} total", "ms", [
                s + t for sr, tr in per_round for s, t in zip(sr, tr, strict=True)])
        for masq, label in ((True, "sdnctl run"), (False, "sdnctl run, no NAT")):
            ms[f"{label}: agent pass"] = Measurement(
                f"{label} setup: the agent's pass", "ms", b.agent_passes(masq))
        comps = []
        for phase in ("setup", "teardown", "total"):
            def r(a: str, b_: str, phase: str = phase) -> float:
                return ratio(ms[f"{a} {phase}"].samples, ms[f"{b_} {phase}"].samples)
            like = r("cni+crun", "sdnctl run")
            like_plain = r("cni+crun, no masq", "sdnctl run, no NAT")
            lib = r("sdnctl library (in-process)", "floor")
            comps += [
                comparison(f"cni+crun/sdnctl run {phase} (NAT)", like, ">= 3", like >= 3),
                comparison(f"cni+crun/sdnctl run {phase} (no NAT)", like_plain, ">= 3",
                           like_plain >= 3),
                comparison(f"sdnctl library/floor {phase} (in-process, kernel path only)", lib,
                           "<= 1.3", lib <= 1.3),
                comparison(f"cni/floor {phase} (NAT)", r("cni", "floor"), "", None),
                comparison(f"cni/floor {phase} (no NAT)", r("cni, no masq", "floor"), "",
                           None)]
        doc: dict[str, Any] = {
            "mode": "quick" if args.quick else "full",
            "params": {"containers": n_ctr, "network_only": n_net, "rounds": rounds},
            "measurements": list(ms.values()), "comparisons": comps,
            "notes": [f"per container; whole containers (sdnctl run, cni+crun): {n_ctr} per "
                      f"round, network only (library, floor, cni): {n_net} per round; "
                      f"{rounds} alternating rounds per side; setup includes making the "
                      "container namespace; like with like: `cni+crun/sdnctl run` (each a "
                      "container of the same image started with its network, NAT on or off)",
                      "sdnctl library (in-process) is the agent's netlink calls alone for a new "
                      "pair (create_netns, Links.add_veth, as a pass starting a container calls "
                      "them): no API, no IPAM, no nftables, no agent process; it is compared "
                      "with the floor only"]}
        missed = [c for c in comps if c["met"] is False and "library" in c["name"]]
        for m in ms.values():
            med, p10, p90 = summary(m.samples)
            print(f"{m.name:40} median {med:8.2f} ms  p10 {p10:8.2f}  p90 {p90:8.2f}")
        for c in comps:
            print(f"{c['name']:58} {c['value']:6.2f}  target {c['target'] or '-':6} "
                  f"met {c['met']}")
        if missed:
            doc["profile"] = profile_sdnctl(b)
            print("the library missed its target; cProfile of one round (top 10 by own time):")
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
    try:
        sys.exit(main())
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        print(f"bench/attach.py: error: {e}", file=sys.stderr)
        sys.exit(1)
