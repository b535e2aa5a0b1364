"""Two controller replicas on a three-member etcd (client TLS), images only in the registry, one
replica killed mid-pull (issue 24). Long: runs with SDNCTL_REGISTRY_FULL=1
(`make test-registry-full`).

The replicas are given the lab's registry (``--registry``): `image load` through one of them
pushes to the registry and neither keeps a blob. Containers of that image are created on two lab
hosts; as soon as an agent is seen downloading a layer (a temporary file in its store), the
replica the agents watch is killed. The agents move to the other replica, the pull carries on
from the registry, and every container runs; no replica has a blob of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import dockerd
from helpers.cli import lab_cli

from sdnctl.lab import registry as labregistry
from sdnctl.lab.testimage import build_test_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from etcdtest import etcd_cluster, etcd_missing, make_etcd_tls, replicas

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not os.environ.get("SDNCTL_REGISTRY_FULL"),
                       reason="long: SDNCTL_REGISTRY_FULL=1 (make test-registry-full)"),
    pytest.mark.skipif(not (dockerd.installed() and labregistry.installed()),
                       reason="docker-registry and apache2-utils are needed (scripts/setup.sh)"),
]

REGISTRY = labregistry.ADDRESS
TOPOLOGY = """\
name: regrepl
lab: {registry: true}
hosts:
  - {name: h1, lab: true}
  - {name: h2, lab: true}
networks:
  - {name: front, subnet: 10.75.0.0/16}
containers: []
"""


@pytest.fixture
def base(run_prefix: str) -> Iterator[Path]:
    """A short directory of our own (unix socket paths must stay short), removed after."""
    path = Path(tempfile.mkdtemp(prefix=f"sdnctl-{run_prefix}-regrepl-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_replicas_without_local_images_survive_a_kill_mid_pull(run_prefix: str,
                                                               base: Path) -> None:
    reason = etcd_missing()
    if reason:
        pytest.skip(reason)
    topology = base / "regrepl.yaml"
    topology.write_text(TOPOLOGY)
    tls = make_etcd_tls(base / "tls")
    with lab_cli(run_prefix) as cli, \
            etcd_cluster(base / "etcd", size=3, tls=tls) as cluster, \
            replicas(base / "ctl", cluster.url(f"/{run_prefix}"), count=2, extra_args=[
                *tls.controller_args(), "--registry", f"{REGISTRY}/repl",
                "--registry-config", str(cli.run_dir / "registries.json"),
                "--blob-dir", str(base / "ctl" / "blobs")]) as controllers:
        cli.env["SDNCTL_CONTROLLER"] = ",".join(controllers.addresses)
        cli.run("up", str(topology))
        archive = str(base / "big.tar")
        image_id = build_test_image(archive, "big:1", extra_bytes=40 << 20)
        cli.run("image", "load", "-i", archive, timeout=300)
        listed = {i["id"]: i for i in cli.json("image", "ls")}
        assert listed[image_id]["source"].startswith(f"{REGISTRY}/repl/big@sha256:")

        # `run` waits for the container to run: in the background, while we watch the pull
        runs = [subprocess.Popen(
            [sys.executable, "-m", "sdnctl.main", "run", "--name", f"c{host}", "--host", host,
             "--network", "front", "--image", "big:1", "--", "sleep", "1000"],
            env=cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for host in ("h1", "h2")]
        stores = [cli.run_dir / "lab" / f"{run_prefix}{h}" / "store" / "tmp" for h in
                  ("h1", "h2")]
        deadline = time.monotonic() + 60
        while not any(any(s.glob("layer-*")) for s in stores if s.exists()):
            assert time.monotonic() < deadline, "no agent started pulling"
            time.sleep(0.01)
        controllers.kill(0)  # the replica the agents watch, mid-pull

        deadline = time.monotonic() + 120
        while True:
            states = {c["name"]: c["state"] for c in cli.json("ps")}
            if states == {"ch1": "running", "ch2": "running"}:
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.5)
        for run in runs:
            run.wait(timeout=60)
        assert cli.run("exec", "ch2", "--", "cat", "/etc/sdnctl-image").stdout.strip() == \
            "big:1"
        for blobs in (base / "ctl").glob("blobs*"):
            assert not any(blobs.rglob("sha256/*")), blobs  # no replica kept a blob
        cli.run("rm", "-f", "ch1", "ch2")
        cli.run("down", str(topology))
