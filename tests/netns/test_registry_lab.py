"""Images through a real registry: Debian's docker-registry (distribution 2.8) with TLS and a
password, run by `sdnctl up` in the lab's outside world (``lab: {registry: true}``).

- sdnctl pushes, Docker 20.10 (a private dockerd in a lab host's namespace, reaching the registry
  through the underlay) pulls and runs it, with the same image ID.
- Docker pushes, sdnctl pulls (records it: no blob reaches the controller) and runs it in a
  container; the agent fetched the layers from the registry itself.
- A controller given a registry pushes what `image load` brings to it and keeps no blob; an
  agent pulls that image's layers from the registry.
- The agent's store: `status` shows what no container needs, `image prune` removes it.
- A manifest, a config or a layer whose bytes do not match their digest is refused, and nothing
  is kept (no image recorded, no layer unpacked, no temporary file left).

Skipped only when the packages are missing (scripts/setup.sh installs them).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import dockerd
from helpers.cli import Cli, exited, lab_cli

from sdnctl.lab import registry as labregistry
from sdnctl.lab.testimage import build_test_image

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not (dockerd.installed() and labregistry.installed()),
                       reason="docker.io, docker-registry and apache2-utils are needed; "
                       "scripts/setup.sh installs them"),
]

TOPOLOGY = """\
name: reglab
lab: {registry: true}
hosts:
  - {name: h1, lab: true}
  - {name: h2, lab: true}
networks:
  - {name: front, subnet: 10.74.0.0/16}
containers: []
"""
REGISTRY = "203.0.113.1:5000"
TAG = "sdnctl-test:latest"


@pytest.fixture(scope="module")
def reglab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, Path]]:
    # module-scoped: one lab (and one registry) for the tests of this file
    prefix = "r" + secrets.token_hex(3)[:5]
    tmp = tmp_path_factory.mktemp("reglab")
    path = tmp / "reglab.yaml"
    path.write_text(TOPOLOGY)
    with lab_cli(prefix) as cli:
        cli.run("up", str(path))
        yield cli, tmp
        down = cli.run("down", cli.files["reglab"]).stderr  # the last file brought up
        assert "lab registry stopped" in down, down
        assert not (cli.run_dir / "lab" / f"{prefix}registry").exists()
        assert REGISTRY not in json.loads((cli.run_dir / "registries.json").read_text())[
            "registries"]


def registry_files(cli: Cli) -> dict[str, Any]:
    with open(cli.run_dir / "registries.json") as f:
        entry: dict[str, Any] = json.load(f)["registries"][REGISTRY]
    return entry


def storage(cli: Cli) -> Path:
    return Path(cli.json("status")["lab"]["registry"]["storage"])


def blob_file(root: Path, digest: str) -> Path:
    hexd = digest.removeprefix("sha256:")
    return root / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


def corrupt(path: Path) -> None:
    """Same length, other bytes (the registry serves what its storage holds)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def agent_store(cli: Cli, host: str) -> Path:
    return cli.run_dir / "lab" / f"{cli.env['SDNCTL_LAB_PREFIX']}{host}" / "store"


def run(cli: Cli, name: str, host: str, image: str, *cmd: str) -> dict[str, Any]:
    cli.run("run", "--name", name, "--host", host, "--network", "front", "--image", image,
            *cmd, check=False)
    return cli.container(name)


def test_push_by_sdnctl_pull_by_docker_and_back(reglab: tuple[Cli, Path],
                                                test_image: tuple[str, str]) -> None:
    cli, tmp = reglab
    status = cli.json("status")["lab"]["registry"]
    assert status["address"] == REGISTRY and status["url"] == f"https://{REGISTRY}"
    entry = registry_files(cli)
    cli.run("image", "load", "-i", test_image[0])
    out = cli.run("image", "push", TAG, f"{REGISTRY}/app:1.0").stdout
    assert f"Pushed {TAG} as {REGISTRY}/app:1.0@sha256:" in out

    ca = Path(entry["ca"]).read_text()
    h2 = f"/run/netns/{cli.env['SDNCTL_LAB_PREFIX']}h2"
    with dockerd.private_dockerd(cli.env["SDNCTL_LAB_PREFIX"], netns=h2,
                                 etc_files={f"docker/certs.d/{REGISTRY}/ca.crt": ca}) as docker:
        # without credentials the registry refuses Docker: the password is what lets it in
        with pytest.raises(AssertionError, match=r"no basic auth credentials|unauthorized"):
            docker.docker("pull", f"{REGISTRY}/app:1.0")
        docker.docker("login", REGISTRY, "-u", entry["username"], "-p", entry["password"])
        docker.docker("pull", f"{REGISTRY}/app:1.0")
        inspect = json.loads(docker.docker("image", "inspect", f"{REGISTRY}/app:1.0").stdout)[0]
        assert inspect["Id"] == test_image[1]  # sdnctl pushed the config as it was
        ran = docker.docker("run", "--rm", "--network", "none", f"{REGISTRY}/app:1.0",
                            "cat", "/etc/sdnctl-image").stdout
        assert ran.strip() == TAG
        # and back: Docker pushes (its own gzip layers and manifest), sdnctl pulls and runs
        docker.docker("tag", f"{REGISTRY}/app:1.0", f"{REGISTRY}/fromdocker:2")
        docker.docker("push", f"{REGISTRY}/fromdocker:2")

    cli.run("image", "rm", TAG)  # the controller keeps nothing of it now
    blobs = cli.run_dir / "state" / "blobs" / "sha256"
    assert not blobs.exists() or not any(blobs.iterdir())
    pulled = cli.json("image", "pull", f"{REGISTRY}/fromdocker:2")
    assert pulled["id"] == test_image[1]
    assert pulled["source"].startswith(f"{REGISTRY}/fromdocker@sha256:")
    assert not blobs.exists() or not any(blobs.iterdir())  # a pull moves no blob here

    ctr = run(cli, "fromreg", "h1", f"{REGISTRY}/fromdocker:2", "--", "sleep", "1000")
    assert ctr["state"] == "running", ctr
    assert cli.run("exec", "fromreg", "--", "cat", "/etc/sdnctl-image").stdout.strip() == TAG
    store = agent_store(cli, "h1")
    for diff_id in pulled["layers"]:
        # (unpacked as it came, or its copy for the container's user namespace)
        assert list(store.glob(f"layers*/sha256/{diff_id.removeprefix('sha256:')}"))
    assert not any((store / "tmp").iterdir())
    assert not blobs.exists() or not any(blobs.iterdir())  # the agent did not go through us
    cli.run("rm", "-f", "fromreg")

    # a topology's `image: host:port/repo:tag`: `up` pulls (records) it on demand
    path = tmp / "reglab-with-container.yaml"
    path.write_text(TOPOLOGY.replace(
        "containers: []", f"containers:\n  - {{name: fromtopo, host: h2, network: front, "
        f"image: '{REGISTRY}/app:1.0', command: [sleep, '1000']}}"))
    cli.run("up", str(path))
    assert cli.container("fromtopo")["state"] == "running"
    recorded = {t: i["source"] for i in cli.json("image", "ls") for t in i["repo_tags"]}
    assert recorded[f"{REGISTRY}/app:1.0"].startswith(f"{REGISTRY}/app@sha256:")


def test_a_controller_with_a_registry_keeps_no_blobs(reglab: tuple[Cli, Path]) -> None:
    cli, tmp = reglab
    pid = cli.controller_pid()
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        if exited(pid):
            break
        time.sleep(0.05)
    cli.env["SDNCTL_REGISTRY"] = f"{REGISTRY}/ctl"  # what the controller `up` starts is given
    try:
        cli.run("up", cli.files["reglab"])
    finally:
        del cli.env["SDNCTL_REGISTRY"]
    archive = str(tmp / "loaded.tar")
    image_id = build_test_image(archive, "loaded:1")
    cli.run("image", "load", "-i", archive)
    listed = {i["id"]: i for i in cli.json("image", "ls")}
    assert listed[image_id]["repo_tags"] == ["loaded:1"]
    assert listed[image_id]["source"].startswith(f"{REGISTRY}/ctl/loaded@sha256:")
    blobs = cli.run_dir / "state" / "blobs" / "sha256"
    assert not blobs.exists() or not any(blobs.iterdir())  # the archive went to the registry
    assert (storage(cli) / "docker/registry/v2/repositories/ctl/loaded/_manifests/tags/1").is_dir()
    ctr = run(cli, "loaded", "h1", "loaded:1", "--", "sleep", "1000")
    assert ctr["state"] == "running", ctr
    assert cli.run("exec", "loaded", "--", "cat", "/etc/sdnctl-image").stdout.strip() == \
        "loaded:1"
    cli.run("rm", "-f", "loaded")

    # agent-side garbage collection: its layers are unused now; `image prune` takes them
    base = listed[image_id]["layers"][0]  # the layer only this image has (the tag is in it)
    store = agent_store(cli, "h1")
    assert list(store.glob(f"layers*/sha256/{base[7:]}"))
    stores = cli.json("status")["lab"]["image_stores"]
    assert stores["h1"]["unused_layers"] >= 1 and stores["h1"]["unused_bytes"] > 0
    pruned = cli.json("image", "prune", "--host", "h1")["h1"]
    assert base in pruned["removed_layers"] and pruned["freed_bytes"] > 0
    assert not list(store.glob(f"layers*/sha256/{base[7:]}"))
    assert cli.json("status")["lab"]["image_stores"]["h1"]["unused_layers"] == 0


def test_wrong_digests_are_refused_and_nothing_is_kept(reglab: tuple[Cli, Path]) -> None:
    cli, tmp = reglab
    archive = str(tmp / "bad.tar")
    image_id = build_test_image(archive, "baddigest:1")
    cli.run("image", "load", "-i", archive)
    cli.run("image", "push", "baddigest:1", f"{REGISTRY}/bad:config")
    cli.run("image", "push", "baddigest:1", f"{REGISTRY}/bad:manifest")
    cli.run("image", "rm", "baddigest:1")
    before = cli.json("image", "ls")
    root = storage(cli)

    # a config whose bytes are not its digest
    corrupt(blob_file(root, image_id))
    done = cli.run("image", "pull", f"{REGISTRY}/bad:config", check=False)
    assert done.returncode != 0 and "hashes to" in done.stderr, done.stderr
    assert cli.json("image", "ls") == before

    # a manifest whose bytes are not the digest the registry announces for the tag
    link = root / "docker/registry/v2/repositories/bad/_manifests/tags/manifest" \
        / "current/link"
    corrupt(blob_file(root, link.read_text().strip()))
    done = cli.run("image", "pull", f"{REGISTRY}/bad:manifest", check=False)
    assert done.returncode != 0 and "manifest" in done.stderr and "hashes to" in done.stderr
    assert cli.json("image", "ls") == before

    # a layer: recorded fine (the config is intact), refused by the agent that pulls it
    archive2 = str(tmp / "bad2.tar")
    build_test_image(archive2, "badlayer:1")
    cli.run("image", "load", "-i", archive2)
    cli.run("image", "push", "badlayer:1", f"{REGISTRY}/bad:layer")
    cli.run("image", "rm", "badlayer:1")
    pulled = cli.json("image", "pull", f"{REGISTRY}/bad:layer")
    manifest = json.loads(blob_file(root, pulled["source"].split("@")[1]).read_text())
    base = manifest["layers"][0]["digest"]
    corrupt(blob_file(root, base))
    done = cli.run("run", "--name", "badlayer", "--host", "h2", "--network", "front",
                   "--image", f"{REGISTRY}/bad:layer", "--", "sleep", "1000", check=False)
    assert done.returncode != 0
    assert "hashes to" in done.stderr or "gzip" in done.stderr, done.stderr
    store = agent_store(cli, "h2")
    layer = f"layers*/sha256/{pulled['layers'][0].removeprefix('sha256:')}"
    assert not list(store.glob(layer))
    cli.run("rm", "-f", "badlayer")
    # the agent retried until the container went; a download then in flight ends refused too,
    # and its temporary file goes with it
    deadline = time.monotonic() + 30
    while any((store / "tmp").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any((store / "tmp").iterdir())
    assert not list(store.glob(layer))
