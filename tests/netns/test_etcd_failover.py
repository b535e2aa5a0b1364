"""Controller replicas on etcd, with real lab hosts: the replica the agents watch dies.

Three controller processes serve one etcd prefix; two lab hosts joined by an overlay run one
container each, pinging each other all along. We kill the replica the agents watch (the first
they are given): they move to the next one and resume from their last revision, the data path
(which needs no agent) loses no packet, and a container created during the failover ends up
running and reachable. Everything (etcd, controllers, namespaces, agents) is stopped by PID or
by prefix at the end, failure or not.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers.capture import start_pinger
from helpers.cli import lab_cli, ping

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from etcdtest import etcd_cluster, etcd_missing, replicas

pytestmark = pytest.mark.netns

TOPOLOGY = """\
name: failover
hosts:
  - {name: h1, lab: true}
  - {name: h2, lab: true}
networks:
  - {name: ov, driver: overlay, subnet: 10.64.0.0/16}
containers:
  - {name: a, host: h1, network: ov}
  - {name: b, host: h2, network: ov}
"""


def test_agents_move_to_another_replica_without_losing_traffic(run_prefix: str) -> None:
    reason = etcd_missing()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix=f"sdnctl-{run_prefix}-etcd-"))
    topology = base / "failover.yaml"
    topology.write_text(TOPOLOGY)
    try:
        with etcd_cluster(base / "etcd", size=1) as cluster, \
                replicas(base / "ctl", cluster.url(f"/{run_prefix}")) as controllers, \
                lab_cli(run_prefix) as cli:
            cli.env["SDNCTL_CONTROLLER"] = ",".join(controllers.addresses)
            cli.run("up", str(topology))
            try:
                a, b = cli.container("a"), cli.container("b")
                assert ping(a["netns"], b["ip"], count=3)
                pinger = start_pinger(
                    ["nsenter", f"--net={a['netns']}", "ping", "-n", "-i", "0.05",
                     "-c", "200", "-W", "1", b["ip"]])
                try:
                    # `up` spreads the agents over the replicas (h1 starts on c0, h2 on c1):
                    # both replicas go, and both agents must move to the last one.
                    controllers.kill(0)
                    controllers.kill(1)
                    # Created during the failover, through the surviving replicas.
                    cli.run("run", "--name", "c", "--host", "h2", "--network", "ov")
                    out, _ = pinger.communicate(timeout=60)
                finally:
                    if pinger.poll() is None:
                        pinger.kill()
                        pinger.wait()
                sent = re.search(r"(\d+) packets transmitted, (\d+) received", out)
                assert sent, out
                assert sent.group(1) == sent.group(2) == "200", out
                for host in ("h1", "h2"):
                    log = (cli.run_dir / "lab" / f"{run_prefix}{host}" / "agent.log").read_text()
                    assert f"moving to controller {controllers.address(2)}" in log, log[-2000:]
                c = cli.container("c")
                assert c["state"] == "running"
                assert ping(a["netns"], c["ip"], count=3)
                # The agents follow the surviving replicas: a later change reaches them too.
                cli.run("rm", "-f", "c")
                deadline = time.monotonic() + 20
                while ping(a["netns"], c["ip"]):
                    assert time.monotonic() < deadline, "c still answers after rm"
            finally:
                cli.run("rm", "-f", "c", check=False)
                cli.run("down", str(topology), check=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)
