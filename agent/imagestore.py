"""The host's image store: layers unpacked once, by digest; each container's writable layer.

    <store>/layers/sha256/<hex>/       one unpacked layer (overlayfs whiteouts), never modified
    <store>/images/<hex>.json          an image's config and layer list, as the controller sent
    <store>/containers/<name>/upper    the container's writes (copy-on-write over the layers)
    <store>/containers/<name>/work     overlayfs' scratch directory
    <store>/volumes/<name>/            a named volume (kept when its containers go)
    <store>/tmp/                       downloads in progress (always removed)

A layer arrives as an uncompressed tar (from the controller, HostSync.FetchBlob, or inflated
from a registry's blob by :mod:`agent.imagefetch`), is checked
against its digest while it is written, then unpacked by :func:`sdnctl.api.imagefmt.unpack_layer`,
which refuses members that would climb out and never follows a symlink while writing. A layer
directory appears by rename, whole or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from agent import imagegc
from sdnctl.api import imagefmt
from sdnctl.api.model import VolumeMount
from sdnctl.api.registry import RegistryError

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class ImageError(Exception):
    pass


class Fetcher(Protocol):
    def image(self, image_id: str) -> tuple[bytes, tuple[str, ...]]:
        """An image's config JSON and its layers (diff IDs, bottom first)."""
        ...

    def blob(self, digest: str) -> Iterator[bytes]:
        """The blob's bytes, in chunks."""
        ...


@dataclass(frozen=True)
class LocalImage:
    id: str
    layers: tuple[str, ...]  # directories, bottom first
    config: imagefmt.RunConfig


def _hex(digest: str) -> str:
    if not _DIGEST.fullmatch(digest):
        raise ImageError(f"{digest!r} is not a sha256 digest")
    return digest.removeprefix("sha256:")


class ImageStore:
    def __init__(self, root: str, fetcher: Fetcher | None = None) -> None:
        self.root = root
        self.fetcher = fetcher
        for sub in ("layers/sha256", "images", "containers", "volumes", "tmp"):
            os.makedirs(os.path.join(root, sub), mode=0o700, exist_ok=True)

    # -- images -------------------------------------------------------------------------------

    def layer_dir(self, digest: str, owner: int = 0) -> str:
        """A layer's directory; ``owner`` > 0: the copy shifted for a user namespace whose root
        is that uid (``layers-<owner>/``)."""
        top = f"layers-{owner}" if owner else "layers"
        return os.path.join(self.root, top, "sha256", _hex(digest))

    def ensure(self, image_id: str, owner: int = 0) -> LocalImage:
        """The image, fetching and unpacking whatever of it this host lacks (for a user
        namespace whose root is ``owner``: a copy whose files that root owns)."""
        record = os.path.join(self.root, "images", f"{_hex(image_id)}.json")
        try:
            with open(record) as f:
                saved = json.load(f)
            config, layers = saved["config"].encode(), tuple(saved["layers"])
        except (OSError, ValueError, KeyError):
            config, layers = self._fetch_record(image_id, record)
        else:
            if self.fetcher is not None and any(
                    not os.path.isdir(self.layer_dir(d, owner)) for d in layers):
                # a layer to fetch: ask again where from (a registry's image names its blobs)
                self._fetch_record(image_id, record)
        for digest in layers:
            if not os.path.isdir(self.layer_dir(digest, owner)):
                self._fetch_layer(digest, owner)
        return LocalImage(image_id, tuple(self.layer_dir(d, owner) for d in layers),
                          imagefmt.runtime_config(config))

    def _fetch_record(self, image_id: str, record: str) -> tuple[bytes, tuple[str, ...]]:
        if self.fetcher is None:
            raise ImageError(f"image {image_id} is not on this host and no controller to ask")
        try:
            config, layers = self.fetcher.image(image_id)
        except RegistryError as e:
            raise ImageError(f"image {image_id}: {e}") from None
        if "sha256:" + hashlib.sha256(config).hexdigest() != image_id:
            raise ImageError(f"image {image_id}: the config received does not match its ID")
        for digest in layers:
            _hex(digest)
        tmp = f"{record}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"config": config.decode(), "layers": list(layers)}, f)
        os.replace(tmp, record)
        return config, layers

    def _fetch_layer(self, digest: str, owner: int = 0) -> None:
        assert self.fetcher is not None
        fd, path = tempfile.mkstemp(dir=os.path.join(self.root, "tmp"), prefix="layer-")
        try:
            sha = hashlib.sha256()
            with os.fdopen(fd, "wb") as f:
                try:
                    for chunk in self.fetcher.blob(digest):
                        sha.update(chunk)
                        f.write(chunk)
                except RegistryError as e:
                    raise ImageError(f"layer {digest}: {e}") from None
            if "sha256:" + sha.hexdigest() != digest:
                raise ImageError(f"layer {digest}: the bytes received do not match the digest")
            dest = self.layer_dir(digest, owner)
            os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
            try:
                imagefmt.unpack_layer(path, dest, id_offset=owner)
            except FileExistsError:
                pass  # unpacked meanwhile by another pass: the same content
            except imagefmt.ImageFormatError as e:
                raise ImageError(str(e)) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def images(self) -> list[str]:
        return sorted("sha256:" + f.removesuffix(".json")
                      for f in os.listdir(os.path.join(self.root, "images"))
                      if f.endswith(".json"))

    def ensure_for(self, name: str, image_id: str, owner: int = 0
                   ) -> tuple[LocalImage, str, str]:
        """:meth:`ensure` and :meth:`prepare` for container ``name`` under the store's lock, so
        that a garbage collection (:mod:`agent.imagegc`) never takes a layer in between."""
        with imagegc.locked(self.root):
            image = self.ensure(image_id, owner)
            upper, work = self.prepare(name, image_id, owner)
        return image, upper, work

    # -- containers ---------------------------------------------------------------------------

    def container_dir(self, name: str) -> str:
        return os.path.join(self.root, "containers", name)

    def prepare(self, name: str, image_id: str, owner: int = 0) -> tuple[str, str]:
        """The container's upper and work directories; a new image gets a new, empty upper."""
        base = self.container_dir(name)
        stamp = os.path.join(base, "image")
        try:
            with open(stamp) as f:
                same = f.read().strip() == image_id
        except FileNotFoundError:
            same = False
        if not same:
            self.remove_container(name)
        upper, work = os.path.join(base, "upper"), os.path.join(base, "work")
        for path in (upper, work):
            os.makedirs(path, mode=0o755, exist_ok=True)
        if owner:
            os.chown(upper, owner, owner)
        with open(stamp, "w") as f:
            f.write(image_id + "\n")
        return upper, work

    def remove_container(self, name: str) -> None:
        """Forget the container's writes (gone already is success)."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.container_dir(name))

    def containers(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.root, "containers")))

    # -- volumes ------------------------------------------------------------------------------

    def volume_source(self, volume: VolumeMount, owner: int = 0) -> str:
        """The host directory to bind: a named volume's (made on first use, owned by the
        container's root ``owner``) or the host path, which must exist and be a directory or a
        file, not a symlink out of the way."""
        if volume.named:
            path = os.path.join(self.root, "volumes", volume.source)
            if not os.path.isdir(path):
                os.makedirs(path, mode=0o755)
                os.chown(path, owner, owner)
            return path
        real = os.path.realpath(volume.source)
        if real != volume.source.rstrip("/") or not os.path.exists(real):
            raise ImageError(f"bind mount source {volume.source!r} must exist and contain no "
                             "symlink")
        return real

    def volumes(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.root, "volumes")))
