"""The agent's image garbage collection on a store laid out as ImageStore lays it out (no root:
layer directories are plain directories here)."""

from __future__ import annotations

import json
from pathlib import Path

from agent import imagegc

A, B, C, D = ("sha256:" + ch * 64 for ch in "abcd")
IMG1, IMG2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def make_store(root: Path) -> None:
    for sub in ("images", "containers", "tmp", "layers/sha256", "layers-100000/sha256"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image, layers in ((IMG1, [A, B]), (IMG2, [A, C])):
        (root / "images" / f"{image[7:]}.json").write_text(json.dumps(
            {"config": "{}", "layers": layers}))
    for digest in (A, B, C, D):  # D: of no image (an interrupted pull)
        layer = root / "layers/sha256" / digest[7:]
        layer.mkdir()
        (layer / "file").write_bytes(b"x" * 5000)
    (root / "layers-100000/sha256" / C[7:]).mkdir()  # a copy for a user namespace
    (root / "containers" / "web").mkdir()
    (root / "containers" / "web" / "image").write_text(IMG1 + "\n")


def layers_left(root: Path) -> set[str]:
    return {"sha256:" + p.name for p in root.glob("layers*/sha256/*")}


def test_unused_images_go_after_the_grace_period_with_only_their_layers(tmp_path: Path) -> None:
    make_store(tmp_path)
    before = imagegc.usage(str(tmp_path))
    assert (before.layers, before.unused_layers) == (4, 2)  # C and D are needed by no container
    first = imagegc.prune(str(tmp_path), grace=60, now=1000.0)
    assert first.removed_layers == [] and first.removed_images == []
    assert set(first.waiting) == {IMG2, f"layer:{D}"}  # marked, not removed yet
    assert imagegc.prune(str(tmp_path), grace=60, now=1059.0).removed_layers == []
    assert layers_left(tmp_path) == {A, B, C, D}

    dry = imagegc.prune(str(tmp_path), grace=60, now=1060.0, dry_run=True)
    assert dry.removed_layers == [C, D] and layers_left(tmp_path) == {A, B, C, D}
    done = imagegc.prune(str(tmp_path), grace=60, now=1060.0)
    assert done.removed_images == [IMG2]
    assert done.removed_layers == [C, D] and done.freed_bytes > 0
    assert layers_left(tmp_path) == {A, B}  # A is shared with the used image: kept
    assert not (tmp_path / "images" / f"{IMG2[7:]}.json").exists()
    assert not any((tmp_path / "tmp").iterdir())
    assert imagegc.usage(str(tmp_path)).unused_layers == 0


def test_an_image_used_again_loses_its_mark(tmp_path: Path) -> None:
    make_store(tmp_path)
    imagegc.prune(str(tmp_path), grace=60, now=1000.0)  # IMG2 marked unused
    (tmp_path / "containers" / "db").mkdir()
    (tmp_path / "containers" / "db" / "image").write_text(IMG2 + "\n")
    imagegc.prune(str(tmp_path), grace=60, now=1030.0)  # in use: the mark goes
    (tmp_path / "containers" / "db" / "image").unlink()
    late = imagegc.prune(str(tmp_path), grace=60, now=1070.0)  # unused again since 1070
    assert late.removed_images == [] and IMG2 in late.waiting
    assert C in layers_left(tmp_path)
