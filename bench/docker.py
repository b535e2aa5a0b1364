"""Issue 18: `docker run --network NET` on sdnctl's Docker plugin vs Docker's own bridge driver.

Design note. `sdnctl up` brings up one lab host with ``docker: true`` (its controller, its agent
serving the plugin, and a private Debian dockerd 20.10 in the host's namespaces, Docker's
defaults kept), as a user would. Two user-defined networks live in that one dockerd: ``front``
(``-d sdnctl --ipam-driver sdnctl``: the controller's address, the agent's veth at Join, its
bridge and guards) and ``ref`` (Docker's ``bridge`` driver and default IPAM). Per round, each
side (alternating, A B B A ...) gets one timed ``docker run -d --network NET IMAGE sleep``
through Debian's /usr/bin/docker, wall time until the client returns (the container runs), and
one timed ``docker rm -f``. Same daemon, same image, same client: the difference is the
network driver's work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

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

from sdnctl.lab.dockerd import DOCKER, DOCKERD  # noqa: E402
from sdnctl.lab.testimage import DEFAULT_TAG, build_test_image  # noqa: E402

TOPOLOGY = """\
name: dockerbench
hosts:
  - {name: h1, lab: true, docker: true}
networks: []
containers: []
"""
SIDES = {"sdnctl": "front", "docker bridge": "ref"}


def main() -> int:
    args = bench_args(__doc__.splitlines()[0])
    if not (os.access(DOCKER, os.X_OK) and os.access(DOCKERD, os.X_OK)):
        print(f"{DOCKERD} or {DOCKER} missing (bench/setup.sh installs docker.io)",
              file=sys.stderr)
        return 2
    rounds = 15 if args.quick else 60
    prefix = unique_prefix("w")
    work = Path(tempfile.mkdtemp(prefix=f"sdnctl-bench-{prefix}-"))
    runs: dict[str, list[float]] = {side: [] for side in SIDES}
    removes: dict[str, list[float]] = {side: [] for side in SIDES}
    try:
        (work / "t.yaml").write_text(TOPOLOGY)
        build_test_image(str(work / "image.tar"))
        with lab_cli(prefix) as cli:
            cli.run("up", str(work / "t.yaml"), "--timeout", "60")
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                   "DOCKER_HOST": cli.host("h1")["docker_host"],
                   "DOCKER_CONFIG": str(work / "client")}

            def docker(*argv: str) -> str:
                return subprocess.run([DOCKER, *argv], env=env, capture_output=True,
                                      text=True, check=True, timeout=120).stdout

            docker("load", "-i", str(work / "image.tar"))
            docker("network", "create", "-d", "sdnctl", "--ipam-driver", "sdnctl",
                   "--subnet", "10.97.0.0/16", "-o", "sdnctl.driver=bridge", "-o",
                   "sdnctl.network=front", "front")
            docker("network", "create", "-d", "bridge", "--subnet", "10.98.0.0/16", "ref")
            for network in SIDES.values():  # warm both paths (first image use, first join)
                docker("rm", "-f", docker("run", "-d", "--network", network, DEFAULT_TAG,
                                          "sleep", "600").strip())

            def side(name: str) -> Callable[[], list[float]]:
                def run() -> list[float]:
                    with Timer() as t:
                        cid = docker("run", "-d", "--network", SIDES[name], DEFAULT_TAG,
                                     "sleep", "600").strip()
                    runs[name].append(t.ms)
                    with Timer() as t:
                        docker("rm", "-f", cid)
                    removes[name].append(t.ms)
                    return []
                return run

            alternate_many({name: side(name) for name in SIDES}, rounds)
    finally:
        with contextlib.suppress(Exception):
            shutil.rmtree(work, ignore_errors=True)
    ms = [Measurement(f"docker run --network ({name})", "ms", runs[name]) for name in SIDES]
    ms += [Measurement(f"docker rm -f ({name})", "ms", removes[name]) for name in SIDES]
    run_ratio = ratio(runs["sdnctl"], runs["docker bridge"])
    rm_ratio = ratio(removes["sdnctl"], removes["docker bridge"])
    comps = [comparison("sdnctl/bridge docker run", run_ratio, "<= 1", run_ratio <= 1),
             comparison("sdnctl/bridge docker rm", rm_ratio, "", None)]
    for m in ms:
        med, p10, p90 = summary(m.samples)
        print(f"{m.name:36} median {med:8.1f} ms  p10 {p10:8.1f}  p90 {p90:8.1f}")
    for c in comps:
        print(f"{c['name']:28} {c['value']:6.2f}  target {c['target'] or '-':5} met {c['met']}")
    write_result("docker", {"mode": "quick" if args.quick else "full",
                            "params": {"rounds": rounds, "dockerd": "Debian 20.10, defaults",
                                       "image": DEFAULT_TAG},
                            "measurements": ms, "comparisons": comps,
                            "notes": ["wall time of Debian's docker client against one lab "
                                      "dockerd; both networks user-defined in that daemon",
                                      f"pid {os.getpid()}"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
