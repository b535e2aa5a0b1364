"""`sdnctl image save` writes what Docker reads: a real `docker load` (Debian's docker.io 20.10,
a private daemon in namespaces of this test's own, see helpers/dockerd.py) accepts the archive
and finds the same image ID, tag and layers; and what `docker save` writes back, sdnctl loads
as the same image. Skipped only when docker.io is not installed (scripts/setup.sh installs it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import dockerd
from helpers.cli import Cli, lab_cli

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not dockerd.installed(),
                       reason="docker.io (/usr/sbin/dockerd, /usr/bin/docker) is not installed; "
                       "scripts/setup.sh installs it"),
]

TOPOLOGY = """\
name: dockercompat
hosts:
  - {name: h1, lab: true}
containers: []
"""
TAG = "sdnctl-test:latest"


@pytest.fixture
def cli(tmp_path: Path, run_prefix: str) -> Iterator[Cli]:
    path = tmp_path / "dockercompat.yaml"
    path.write_text(TOPOLOGY)
    with lab_cli(run_prefix) as c:
        c.run("up", str(path))
        yield c


def test_image_save_is_accepted_by_docker_load_with_the_same_id(
        cli: Cli, tmp_path: Path, run_prefix: str, test_image: tuple[str, str]) -> None:
    cli.run("image", "load", "-i", test_image[0])
    ours = cli.json("image", "ls")
    assert [i["id"] for i in ours] == [test_image[1]]
    saved = tmp_path / "saved.tar"
    cli.run("image", "save", "-o", str(saved), TAG)

    with dockerd.private_dockerd(run_prefix) as docker:
        assert docker.docker("image", "ls", "-q").stdout.strip() == ""  # a store of its own
        loaded = docker.docker("load", "-i", str(saved)).stdout
        assert f"Loaded image: {TAG}" in loaded, loaded
        inspect = json.loads(docker.docker("image", "inspect", TAG).stdout)[0]
        assert inspect["Id"] == test_image[1]
        assert inspect["RepoTags"] == [TAG]
        assert inspect["RootFS"]["Layers"] == ours[0]["layers"]
        # and back: what Docker saves, we load as the same image
        resaved = tmp_path / "docker-saved.tar"
        docker.docker("save", "-o", str(resaved), TAG)

    cli.run("image", "rm", TAG)
    assert cli.json("image", "ls") == []
    assert test_image[1] in cli.run("image", "load", "-i", str(resaved)).stdout
    assert [(i["id"], i["repo_tags"]) for i in cli.json("image", "ls")] == [
        (test_image[1], [TAG])]
