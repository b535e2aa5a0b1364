"""Issue 24: a big image pulled by many lab hosts at once from the lab's registry: sdnctl's
agents (straight from the registry) against `docker pull` on the same hosts, and the
controller's CPU meanwhile.

Design note. One lab (`sdnctl up` of a topology with N lab hosts and ``lab: {registry:
true}``: docker-registry with TLS and a password in the outside world, reached by every host
through the underlay), a controller started by `up` (its PID from its pidfile), and one Debian
dockerd per host in that host's network namespace (the confined recipe of
``tests/netns/helpers/dockerd.py``, trusting the registry's CA, logged in). The image is the
busybox test image plus a layer of random (incompressible) bytes, loaded into the controller and
pushed to the registry with `sdnctl image push`.

Each round alternates the sides:
- sdnctl: `sdnctl image pull` (records it), then one container of it per host created in one
  `sdnctl up` of the topology with those containers; the sample is the wall time from the `up`
  to every container running (every agent fetched and unpacked every layer from the registry,
  then started its container). The controller's CPU time (utime + stime of its process, from
  /proc) over that interval is recorded beside it, and again for the same `up` once the layers
  are on every host (creating and watching the containers, no pull): the difference is what
  the pull costs the controller. Then the containers go and each agent's store is pruned
  (`sdnctl image prune --grace 0`), so the next round pulls again.
- docker: `docker pull` on every host's daemon at once (threads); the sample is the wall time
  until the last one finished; then `docker rmi`.
The sdnctl side does more than the docker side (it also starts a container per host), so a
ratio <= 1 means no slower. Targets: sdnctl/docker <= 1.0; controller CPU <= 0.5 s per round,
of which the pull itself (the paired difference) <= 0.1 s.

    .venv/bin/python bench/registry.py --quick   # 4 hosts, 30 MB, 3 rounds
    .venv/bin/python bench/registry.py --full    # 10 hosts, 100 MB, 5 rounds
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "netns"))
sys.path.insert(0, str(REPO))

from helpers import dockerd  # noqa: E402  (the tests' confined dockerd)

from sdnctl.lab import registry as labregistry  # noqa: E402
from sdnctl.lab.testimage import build_test_image  # noqa: E402

REGISTRY = labregistry.ADDRESS
TICKS = os.sysconf("SC_CLK_TCK")


def topology(name: str, hosts: int, image: str = "") -> str:
    lines = [f"name: {name}", "lab: {registry: true}", "hosts:"]
    lines += [f"  - {{name: h{i}, lab: true}}" for i in range(hosts)]
    lines += ["networks:", "  - {name: front, subnet: 10.77.0.0/16}"]
    if image:
        lines.append("containers:")
        lines += [f"  - {{name: c{i}, host: h{i}, network: front, image: '{image}', "
                  "command: [sleep, '3600']}" for i in range(hosts)]
    else:
        lines.append("containers: []")
    return "\n".join(lines) + "\n"


class Sdnctl:
    def __init__(self, prefix: str, workdir: Path) -> None:
        self.run_dir = workdir / "run"
        self.env = dict(os.environ, SDNCTL_RUN_DIR=str(self.run_dir),
                        SDNCTL_STATE_DIR=str(self.run_dir / "state"),
                        SDNCTL_LAB_PREFIX=prefix, PYTHONPATH=str(REPO))
        self.env.pop("SDNCTL_CONTROLLER", None)

    def run(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run([sys.executable, "-m", "sdnctl.main", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"sdnctl {' '.join(args)}: {done.stderr.strip()[-1500:]}")
        return done.stdout

    def controller_cpu(self) -> float:
        pid = int((self.run_dir / "controller.pid").read_text().split()[0])
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS


def main() -> int:
    args = harness.bench_args(__doc__ or "")
    hosts, size_mb, rounds = (4, 30, 3) if args.quick else (10, 100, 5)
    if not (dockerd.installed() and labregistry.installed()):
        print("registry bench: docker.io, docker-registry and apache2-utils are needed "
              "(scripts/setup.sh)", file=sys.stderr)
        return 1
    prefix = harness.unique_prefix("rg")
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))
    sdn = Sdnctl(prefix, workdir)
    base = workdir / "base.yaml"
    base.write_text(topology("regbench", hosts))
    image = f"{REGISTRY}/big:1"
    with_containers = workdir / "with.yaml"
    with_containers.write_text(topology("regbench", hosts, image))
    sdnctl_s: list[float] = []
    docker_s: list[float] = []
    cpu_s: list[float] = []
    cpu_base: list[float] = []
    try:
        sdn.run("up", str(base))
        archive = str(workdir / "big.tar")
        build_test_image(archive, "big:1", extra_bytes=size_mb << 20)
        sdn.run("image", "load", "-i", archive)
        sdn.run("image", "push", "big:1", image)
        sdn.run("image", "rm", "big:1")
        entry = json.loads((sdn.run_dir / "registries.json").read_text())["registries"][
            REGISTRY]
        ca = Path(entry["ca"]).read_text()
        with contextlib.ExitStack() as daemons:
            dockers = [daemons.enter_context(dockerd.private_dockerd(
                f"{prefix}d{i}", netns=f"/run/netns/{prefix}h{i}",
                etc_files={f"docker/certs.d/{REGISTRY}/ca.crt": ca})) for i in range(hosts)]
            for d in dockers:
                d.docker("login", REGISTRY, "-u", entry["username"], "-p", entry["password"])

            def sdnctl_round() -> float:
                sdn.run("image", "pull", image)
                cpu0, t0 = sdn.controller_cpu(), time.monotonic()
                sdn.run("up", str(with_containers))
                took = time.monotonic() - t0
                cpu_s.append(sdn.controller_cpu() - cpu0)
                sdn.run("rm", "-f", *[f"c{i}" for i in range(hosts)])
                # the same `up` again, the layers already on every host: the controller's
                # CPU for creating and watching the containers, without any pull
                cpu0 = sdn.controller_cpu()
                sdn.run("up", str(with_containers))
                cpu_base.append(sdn.controller_cpu() - cpu0)
                sdn.run("rm", "-f", *[f"c{i}" for i in range(hosts)])
                sdn.run("up", str(base))
                sdn.run("image", "rm", image)
                sdn.run("image", "prune", "--grace", "0")
                return took

            def docker_round() -> float:
                t0 = time.monotonic()
                with concurrent.futures.ThreadPoolExecutor(hosts) as pool:
                    list(pool.map(lambda d: d.docker("pull", image, timeout=900), dockers))
                took = time.monotonic() - t0
                for d in dockers:
                    d.docker("rmi", image)
                return took

            for i in range(rounds):
                order = [(sdnctl_round, sdnctl_s), (docker_round, docker_s)]
                for fn, samples in (order if i % 2 == 0 else order[::-1]):
                    samples.append(fn())
                print(f"round {i + 1}/{rounds}: sdnctl {sdnctl_s[-1]:.1f}s, docker "
                      f"{docker_s[-1]:.1f}s, controller CPU {cpu_s[-1]:.2f}s", file=sys.stderr)
    finally:
        with contextlib.suppress(RuntimeError):
            sdn.run("down", str(with_containers))
        shutil.rmtree(workdir, ignore_errors=True)
    ratio = harness.paired_ratio(sdnctl_s, docker_s)
    cpu_median = harness.summary(cpu_s)[0]
    pull_cpu = harness.summary([a - b for a, b in zip(cpu_s, cpu_base, strict=True)])[0]
    result: dict[str, Any] = {
        "params": {"hosts": hosts, "image_mb": size_mb, "rounds": rounds},
        "measurements": [
            harness.Measurement(f"sdnctl: {hosts} hosts pull {size_mb} MB + run", "s", sdnctl_s),
            harness.Measurement(f"docker pull on {hosts} hosts ({size_mb} MB)", "s", docker_s),
            harness.Measurement("controller CPU during the sdnctl pull + run", "s", cpu_s),
            harness.Measurement("controller CPU, the same up with the layers present", "s",
                                cpu_base),
        ],
        "comparisons": [
            harness.comparison("sdnctl/docker registry pull", ratio, "<= 1.0", ratio <= 1.0),
            harness.comparison("controller CPU per pull round (s)", cpu_median, "<= 0.5",
                               cpu_median <= 0.5),
            harness.comparison("controller CPU of the pull itself (s, paired difference)",
                               pull_cpu, "<= 0.1", pull_cpu <= 0.1),
        ],
        "notes": ["sdnctl's side also starts one container per host; docker's only pulls",
                  "controller CPU of the pull itself: the CPU of a round minus that of the same "
                  "`up` with the layers already on the hosts"],
    }
    path = harness.write_result("registry", result)
    print(path)
    harness.print_table(harness.load_results([path]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
