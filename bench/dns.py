"""DNS service discovery (issue 19): our resolver (agent/dns.py) vs Debian's aardvark-dns 1.4,
serving the same 1,000 names, measured with dnsperf, side by side in one run.

Design note. One network namespace of the benchmark's own holds a bridge with four addresses:
our resolver's (10.99.0.1), aardvark-dns's (10.99.0.3), dnsperf's source (10.99.0.2, inside
the network, as a container's would be) and an upstream resolver's (10.99.0.53, a dnslib server,
for forwarded names). Each resolver is pinned to CPU 0, dnsperf to CPU 1. Per round and side:
local names (1,000 names, each asked in turn) and one upstream name (ours answers it from its
cache after the first query; aardvark-dns 1.4 has no cache and forwards each one), flat out for
throughput (queries per second), then at a fixed rate with dnsperf -v for the p99 latency. The
sides alternate (harness.alternate_many). Memory: the resident set of our resolver's process
(the resolver alone; inside the agent it shares the agent's interpreter) and of aardvark-dns.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from harness import (
    Measurement,
    alternate_many,
    bench_args,
    comparison,
    summary,
    write_result,
)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
AARDVARK = "/usr/lib/podman/aardvark-dns"
UPSTREAM = os.path.join(REPO, "tests", "netns", "helpers", "dns_upstream.py")
OURS, CLIENT, THEIRS, UPSTREAM_IP = "10.99.0.1", "10.99.0.2", "10.99.0.3", "10.99.0.53"
NAMES = 1000

OUR_SERVER = """
import ipaddress, sys, time
from agent import dns
n = int(sys.argv[1])
by_name = {f"c{i:04d}": f"10.99.{4 + i // 250}.{i % 250 + 1}" for i in range(n)}
zone = dns.Zone("bench", sys.argv[2], ipaddress.IPv4Network("10.99.0.0/16"), "",
                (sys.argv[3],), by_name, {a: name for name, a in by_name.items()})
server = dns.DnsServer().start()
server.update({sys.argv[2]: zone}, wait=True)
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


@contextmanager
def lab(prefix: str) -> Iterator[str]:
    """The namespace, its bridge and addresses; /etc/netns/<ns>/resolv.conf points
    aardvark-dns (started with `ip netns exec`) at the upstream. Removed on exit."""
    ns = prefix
    etc = f"/etc/netns/{ns}"
    sh("ip", "netns", "add", ns)
    try:
        os.makedirs(etc)
        with open(f"{etc}/resolv.conf", "w") as f:
            f.write(f"nameserver {UPSTREAM_IP}\n")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", ns, "link", "set", "br0", "up")
        for address in (OURS, CLIENT, THEIRS, UPSTREAM_IP):
            sh("ip", "-n", ns, "addr", "add", f"{address}/16", "dev", "br0")
        yield ns
    finally:
        sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(etc, ignore_errors=True)


@contextmanager
def process(argv: list[str], ready: str | None = None) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=REPO)
    try:
        if ready is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != ready:
                raise RuntimeError(f"{argv[0]} did not start: {line!r}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_answering(ns: str, server: str, name: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done = in_ns(ns, "dig", "+short", "+time=1", "+tries=1", "-b", CLIENT, f"@{server}",
                     name, check=False)
        if done.stdout.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{server} does not answer {name}")


def dnsperf_qps(ns: str, server: str, queries: str, seconds: float) -> float:
    done = in_ns(ns, "taskset", "-c", "1", "dnsperf", "-s", server, "-a", CLIENT, "-d", queries,
                 "-l", str(seconds), "-q", "100", "-t", "1")
    match = re.search(r"Queries per second:\s+([\d.]+)", done.stdout)
    lost = re.search(r"Queries lost:\s+(\d+)", done.stdout)
    if match is None:
        raise RuntimeError(done.stdout + done.stderr)
    if lost is not None and int(lost.group(1)) > 0:
        print(f"  ({server}: {lost.group(1)} queries lost)", file=sys.stderr)
    return float(match.group(1))


def dnsperf_p99(ns: str, server: str, queries: str, rate: int, seconds: float) -> float:
    """p99 latency in ms at a fixed query rate, from dnsperf's per-query report (-v)."""
    done = in_ns(ns, "taskset", "-c", "1", "dnsperf", "-s", server, "-a", CLIENT, "-d", queries,
                 "-l", str(seconds), "-Q", str(rate), "-v")
    latencies = sorted(float(m) for m in re.findall(r"^> \S+ .* ([\d.]+)$", done.stdout, re.M))
    if not latencies:
        raise RuntimeError("dnsperf -v reported no latencies:\n" + done.stdout[:500])
    return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child_pid(proc: subprocess.Popen[str]) -> int:
    """The server under `ip netns exec ... taskset ...` (exec'd: the same PID)."""
    return proc.pid


@contextmanager
def aardvark(ns: str, config: str) -> Iterator[int]:
    """aardvark-dns 1.4 `run` daemonizes: its PID is in <config>/aardvark.pid; stop that one."""
    pidfile = os.path.join(config, "aardvark.pid")
    sh("ip", "netns", "exec", ns, "taskset", "-c", "0", AARDVARK, "-c", config, "-p", "53",
       "run")
    pid = 0
    try:
        deadline = time.monotonic() + 10
        while not pid and time.monotonic() < deadline:
            with suppress(OSError, ValueError, IndexError), open(pidfile) as f:
                pid = int(f.read().split()[0])
            time.sleep(0.05)
        if not pid:
            raise RuntimeError("aardvark-dns wrote no pidfile")
        yield pid
    finally:
        if pid:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not os.path.exists(f"/proc/{pid}"):
                    break
                time.sleep(0.05)
            else:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def main() -> int:
    args = bench_args(__doc__ or "")
    rounds, seconds = (6, 5.0) if args.full else (2, 3.0)
    prefix = "bd" + secrets.token_hex(3)
    tmp = tempfile.mkdtemp(prefix=f"sdnctl-{prefix}-")
    try:
        local = os.path.join(tmp, "local.txt")
        with open(local, "w") as f:
            f.writelines(f"c{i:04d} A\n" for i in range(NAMES))
        upstream_q = os.path.join(tmp, "upstream.txt")
        with open(upstream_q, "w") as f:
            f.write("www.example A\n")
        config = os.path.join(tmp, "aardvark")
        os.makedirs(config)
        with open(os.path.join(config, "bench"), "w") as f:
            f.write(f"{THEIRS}\n")
            f.writelines(f"{i:064x} 10.99.{4 + i // 250}.{i % 250 + 1}  c{i:04d}\n"
                         for i in range(NAMES))
        with lab(prefix) as ns, \
                process(["ip", "netns", "exec", ns, sys.executable, UPSTREAM, UPSTREAM_IP, "53"],
                        "ready"), \
                process(["ip", "netns", "exec", ns, "taskset", "-c", "0", sys.executable, "-c",
                         OUR_SERVER, str(NAMES), OURS, UPSTREAM_IP], "ready") as ours, \
                aardvark(ns, config) as theirs:
            for server in (OURS, THEIRS):
                wait_answering(ns, server, "c0999")
                wait_answering(ns, server, "www.example")
            sides = {f"{who} {kind}": (lambda s=server, q=queries: dnsperf_qps(ns, s, q, seconds))
                     for who, server in (("sdnctl", OURS), ("aardvark-dns", THEIRS))
                     for kind, queries in (("local", local), ("upstream", upstream_q))}
            qps = alternate_many(sides, rounds)
            p99_sides = {f"{who} {kind}": (lambda s=server, q=queries:
                                             dnsperf_p99(ns, s, q, 2000, 2.0))
                         for who, server in (("sdnctl", OURS), ("aardvark-dns", THEIRS))
                         for kind, queries in (("local", local), ("upstream", upstream_q))}
            p99 = alternate_many(p99_sides, rounds)
            memory = {"sdnctl": rss_mb(child_pid(ours)), "aardvark-dns": rss_mb(theirs)}
        measurements = [Measurement(f"{name} qps", "ops/s", samples)
                        for name, samples in qps.items()]
        measurements += [Measurement(f"{name} p99 @2k q/s", "ms", samples)
                         for name, samples in p99.items()]
        measurements += [Measurement(f"{who} RSS, {NAMES} names", "MB", [mb])
                         for who, mb in memory.items()]
        comparisons = []
        for kind in ("local", "upstream"):
            ratio = summary(qps[f"sdnctl {kind}"])[0] / summary(qps[f"aardvark-dns {kind}"])[0]
            comparisons.append(comparison(f"sdnctl/aardvark-dns {kind} qps", round(ratio, 2),
                                          ">= 1.0", ratio >= 1.0))
            ratio = summary(p99[f"sdnctl {kind}"])[0] / summary(p99[f"aardvark-dns {kind}"])[0]
            comparisons.append(comparison(f"sdnctl/aardvark-dns {kind} p99", round(ratio, 2),
                                          "< 1.0", ratio < 1.0))
        comparisons.append(comparison(f"sdnctl resolver RSS MB, {NAMES} names",
                                      round(memory["sdnctl"], 1), "< 30",
                                      memory["sdnctl"] < 30))
        write_result("dns", {
            "mode": "full" if args.full else "quick",
            "params": {"names": NAMES, "rounds": rounds, "seconds": seconds,
                       "cpu": "each resolver pinned to CPU 0, dnsperf to CPU 1"},
            "measurements": [m.as_dict() for m in measurements],
            "comparisons": comparisons,
            "notes": ["upstream: one name (www.example) from a dnslib server; sdnctl answers it "
                      "from its TTL cache, aardvark-dns 1.4 forwards every query (it has no "
                      "cache), so its upstream rate is the dnslib server's",
                      f"memory: our resolver's own process (Python) "
                      f"{memory['sdnctl']:.1f} MB; inside the agent it shares the interpreter"],
        })
        for m in measurements:
            d = m.as_dict()
            print(f"{m.name:40s} median {d['median']:10.2f} {m.unit}  "
                  f"(p10 {d['p10']:.2f}, p90 {d['p90']:.2f}, n={d['n']})")
        for c in comparisons:
            print(c)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
