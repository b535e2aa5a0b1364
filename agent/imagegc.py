"""Garbage collection of a host's image store: layers no container has used for a while.

Design note. What is in use is read from the store itself, never from the controller: a
container's directory holds the image ID it was prepared from (``containers/<name>/image``), so
an image is *used* while some container directory names it, whether the container runs, has
exited or waits for a restart. An unused image is first *marked* (the time it was first seen
unused, in ``<store>/gc.json``); once it has stayed unused for the grace period, its record goes,
and so does every layer (and every user-namespace copy of it, ``layers-<uid>/``) that no kept
image needs. Layers that belong to no image at all (left by an interrupted pull) are marked and
collected the same way. A layer directory is renamed into ``tmp/`` first, so it disappears at
once and whole, then removed.

The agent preparing a container (:meth:`agent.imagestore.ImageStore.ensure_for`) and a
collection hold the same ``flock`` on ``<store>/lock``, so a collection never removes a layer
between the moment the agent found it present and the moment the container's directory names
its image. The agent collects on its own (every ``--image-gc-interval``) and ``sdnctl image
prune`` runs the same code on a host's store; ``usage`` is the figure ``sdnctl status`` shows.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

MARKS = "gc.json"
LOCK = "lock"
DEFAULT_GRACE = 3600.0  # seconds an image stays after its last container went


@dataclass(frozen=True)
class Usage:
    layers: int
    bytes: int
    unused_layers: int  # needed by no container's image
    unused_bytes: int


@dataclass
class PruneReport:
    removed_images: list[str] = field(default_factory=list)
    removed_layers: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    waiting: list[str] = field(default_factory=list)  # unused, inside their grace period


@contextlib.contextmanager
def locked(root: str) -> Iterator[None]:
    """The store's lock: held while a container is prepared and while a collection runs."""
    fd = os.open(os.path.join(root, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def images_in_use(root: str) -> set[str]:
    used = set()
    base = os.path.join(root, "containers")
    for name in _listdir(base):
        with contextlib.suppress(OSError), open(os.path.join(base, name, "image")) as f:
            used.add(f.read().strip())
    return used


def image_layers(root: str) -> dict[str, tuple[str, ...]]:
    """Every image record of the store: image ID → its layers (diff IDs)."""
    found = {}
    base = os.path.join(root, "images")
    for entry in _listdir(base):
        if not entry.endswith(".json"):
            continue
        try:
            with open(os.path.join(base, entry)) as f:
                layers = tuple(json.load(f)["layers"])
        except (OSError, ValueError, KeyError, TypeError):
            layers = ()
        found["sha256:" + entry.removesuffix(".json")] = layers
    return found


def layer_dirs(root: str) -> dict[str, list[str]]:
    """Every unpacked layer: digest → its directories (as unpacked, and shifted copies)."""
    found: dict[str, list[str]] = {}
    for top in _listdir(root):
        if top == "layers" or top.startswith("layers-"):
            base = os.path.join(root, top, "sha256")
            for entry in _listdir(base):
                found.setdefault("sha256:" + entry, []).append(os.path.join(base, entry))
    return found


def usage(root: str) -> Usage:
    """Layers and bytes in the store, and how much of it no container's image needs."""
    images = image_layers(root)
    needed = {d for image in images_in_use(root) for d in images.get(image, ())}
    total = unused = layers = unused_layers = 0
    for digest, dirs in layer_dirs(root).items():
        size = sum(_tree_size(d) for d in dirs)
        total += size
        layers += 1
        if digest not in needed:
            unused += size
            unused_layers += 1
    return Usage(layers, total, unused_layers, unused)


def prune(root: str, grace: float = DEFAULT_GRACE, now: float | None = None,
          dry_run: bool = False) -> PruneReport:
    """Remove images unused for ``grace`` seconds and the layers only they needed."""
    now = time.time() if now is None else now
    report = PruneReport()
    with locked(root):
        marks = _load_marks(root)
        images = image_layers(root)
        used = images_in_use(root)
        layers = layer_dirs(root)
        orphans = set(layers) - {d for ls in images.values() for d in ls}
        subjects = [i for i in images if i not in used] + [f"layer:{d}" for d in orphans]
        new_marks = {}
        for subject in sorted(subjects):
            first = marks.get(subject, now)
            if now - first >= grace:
                if subject.startswith("layer:"):
                    continue  # removed below with the other layers no kept image needs
                report.removed_images.append(subject)
            else:
                new_marks[subject] = first
                report.waiting.append(subject)
        gone = set(report.removed_images)
        keep = {d for image, ls in images.items() if image not in gone for d in ls}
        keep |= {s.removeprefix("layer:") for s in new_marks if s.startswith("layer:")}
        for digest in sorted(set(layers) - keep):
            report.removed_layers.append(digest)
            report.freed_bytes += sum(_tree_size(d) for d in layers[digest])
        if dry_run:
            return report
        for image in report.removed_images:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(root, "images", image.removeprefix("sha256:") + ".json"))
        for digest in report.removed_layers:
            for path in layers[digest]:
                _remove_tree(root, path)
        _save_marks(root, new_marks)
    return report


def _remove_tree(root: str, path: str) -> None:
    """Gone at once (renamed into tmp/), then removed."""
    doomed = os.path.join(root, "tmp", f"gc-{os.path.basename(path)}-{os.getpid()}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _load_marks(root: str) -> dict[str, float]:
    try:
        with open(os.path.join(root, MARKS)) as f:
            marks = json.load(f)
        return {str(k): float(v) for k, v in marks.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _save_marks(root: str, marks: dict[str, float]) -> None:
    path = os.path.join(root, MARKS)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(marks, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _tree_size(path: str) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + dirnames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []
