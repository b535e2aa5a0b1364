"""Images held by the controller: records in the store, content in a blob directory.

How an image reaches a host: ``sdnctl image load`` streams an archive (a ``docker save`` tar or
an OCI image layout) to the controller, which checks every member and layer
(:mod:`sdnctl.api.imagefmt`) and keeps the config and the uncompressed layer tars as blobs named by
digest, then records the image in the store. A container names an image; the controller
resolves the name to the image ID when the container is created, so a later re-tag does not
change what runs. The host's agent, when it must start the container, asks for the image
(``HostSync.FetchImage``: config and layer list), fetches each layer it lacks
(``HostSync.FetchBlob``, streamed), verifies its digest and unpacks it once into its own
content-addressed layer store.

Key layout: ``/images/<hex>`` → :class:`ImageRecord` (JSON). Blobs: ``<blob dir>/sha256/<hex>``.
The blob directory is local to the controller: replicas need it on shared storage.

Images a registry holds (issue 24) take no blob directory at all: ``RecordImage`` (what
``sdnctl image pull`` and a topology's ``image: host:port/repo:tag`` send) records the config
JSON in the record itself with the manifest's layer descriptors and the pinned reference
(``host/repo@sha256:…``). ``FetchImage`` hands an agent those, plus the trust and credentials
configured for that registry (:mod:`sdnctl.api.registryconfig`), and the agent pulls the layers
from the registry itself: the controller is out of the data path, and any replica serves any
image, since everything it needs is in the shared store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass

from sdnctl.api import imagefmt, imagepull, registry, registryconfig
from sdnctl.api.fields import image_name
from sdnctl.api.model import Container, Invalid, from_json, to_json
from sdnctl.controller import ipam
from sdnctl.controller.errors import FailedPrecondition, NotFound, Unavailable
from sdnctl.controller.keys import CONTAINERS, IMAGES, image_key
from sdnctl.controller.store.base import Compare, Delete, KeyValue, Put, Store

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class ImageRecord:
    id: str  # sha256:<hex> of the config
    repo_tags: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()  # diff IDs, bottom first
    size: int = 0
    # a registry's image (issue 24): where it is and its blobs there; no blob of it is here
    source: str = ""  # host[:port]/repo@sha256:<manifest digest>
    config: str = ""  # the config JSON
    blob_digests: tuple[str, ...] = ()  # as the manifest lists its layers, bottom first
    blob_types: tuple[str, ...] = ()
    blob_sizes: tuple[int, ...] = ()


def _records(store: Store) -> list[tuple[ImageRecord, KeyValue]]:
    kvs, _ = store.range(IMAGES)
    return [(from_json(ImageRecord, kv.value), kv) for kv in kvs]


def resolve(store: Store, ref: str, field: str = "image") -> tuple[ImageRecord, KeyValue]:
    """The image a reference names: an ID (``sha256:<hex>``, or 12+ hex digits of one) or a
    ``name[:tag]``."""
    bare = ref.removeprefix("sha256:")
    if re.fullmatch(r"[0-9a-f]{12,64}", bare):
        matches = [(r, kv) for r, kv in _records(store) if r.id[7:].startswith(bare)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise Invalid(field, f"{ref!r} matches {len(matches)} images; give more digits")
    name = image_name(ref, field)
    for record, kv in _records(store):
        if name in record.repo_tags or record.id == name:
            return record, kv
    raise NotFound(field, ref)


@dataclass(frozen=True)
class PushTarget:
    """Where ``image load`` puts images when the controller has a registry: ``host``
    (host[:port]) and a repository namespace (``sdnctl``: ``name:tag`` goes to
    ``host/sdnctl/name:tag``)."""

    host: str
    namespace: str

    @staticmethod
    def parse(text: str) -> PushTarget:
        ref = registry.parse_reference(text.rstrip("/") + "/x")
        return PushTarget(ref.registry, ref.repository.removesuffix("/x").removesuffix("x"))

    def reference(self, image: imagefmt.Image) -> registry.Reference:
        tag = image.repo_tags[0] if image.repo_tags else ""
        name, _, version = tag.rpartition(":") if tag else ("", "", "")
        name = name.split("/", 1)[1] if registry.names_registry(name) else name
        if not name:
            name, version = "image", image.id.removeprefix("sha256:")[:12]
        repository = f"{self.namespace}/{name}" if self.namespace else name
        return registry.Reference(self.host, repository.lower(), version or "latest")


class Images:
    def __init__(self, store: Store, blob_dir: str, registry_config: str | None = None,
                 push_to: PushTarget | None = None) -> None:
        self.store = store
        self.blobs = imagefmt.BlobStore(blob_dir)
        self.registry_config = registry_config
        self.push_to = push_to

    def load(self, archive: str) -> list[ImageRecord]:
        """Import an archive: blobs first (checked), then all records in one transaction. With
        a registry (``push_to``), the blobs go to the registry and none stays here."""
        if self.push_to is not None:
            return self._load_to_registry(archive, self.push_to)
        try:
            images = imagefmt.import_archive(archive, self.blobs)
        except imagefmt.ImageFormatError as e:
            raise Invalid("archive", str(e)) from None
        wanted = [ImageRecord(i.id, tuple(i.repo_tags), tuple(i.layers), i.size) for i in images]
        self._put_records(wanted)
        return [self.get(r.id)[0] for r in wanted]

    def _load_to_registry(self, archive: str, target: PushTarget) -> list[ImageRecord]:
        """Check the archive as a load does (into a scratch blob store), push each image,
        record it as the registry's; the scratch directory goes whatever happens."""
        client = registry.Client(registryconfig.endpoint(target.host,
                                                         path=self.registry_config))
        wanted = []
        with self.blobs.temp_dir() as scratch:
            blobs = imagefmt.BlobStore(os.path.join(scratch, "blobs"))
            try:
                images = imagefmt.import_archive(archive, blobs)
            except imagefmt.ImageFormatError as e:
                raise Invalid("archive", str(e)) from None
            for image in images:
                ref = target.reference(image)
                try:
                    digest, layers = imagepull.push_image(client, ref, image, blobs, scratch)
                except registry.RegistryError as e:
                    raise Unavailable(f"could not push {ref} to the registry: {e}") from e
                with blobs.open(image.id) as f:
                    config = f.read()
                wanted.append(ImageRecord(
                    id=image.id, repo_tags=tuple(image.repo_tags), layers=tuple(image.layers),
                    size=image.size, source=ref.pinned(digest), config=config.decode(),
                    blob_digests=tuple(x.digest for x in layers),
                    blob_types=tuple(x.media_type for x in layers),
                    blob_sizes=tuple(x.size for x in layers)))
        self._put_records(wanted)
        return [self.get(r.id)[0] for r in wanted]

    def _put_records(self, wanted: list[ImageRecord]) -> None:
        """Write ``wanted`` in one transaction; their tags move to them from other images."""

        def build() -> tuple[list[Compare], list[Put | Delete], None]:
            compares: list[Compare] = []
            ops: list[Put | Delete] = []
            moved = {tag for r in wanted for tag in r.repo_tags}
            new_ids = {r.id for r in wanted}
            for record, kv in _records(self.store):
                if record.id in new_ids:
                    continue
                kept = tuple(t for t in record.repo_tags if t not in moved)
                if kept != record.repo_tags:  # a tag moves to the new image (docker load)
                    compares.append(Compare(kv.key, kv.mod_revision))
                    ops.append(Put(kv.key, to_json(dataclasses.replace(record,
                                                                       repo_tags=kept))))
            for record in wanted:
                key = image_key(record.id)
                have = self.store.get(key)
                tags = record.repo_tags
                if have is not None:
                    old = from_json(ImageRecord, have.value)
                    tags = tuple(sorted(set(old.repo_tags) | set(tags)))
                compares.append(Compare(key, have.mod_revision if have else 0))
                ops.append(Put(key, to_json(dataclasses.replace(record, repo_tags=tags))))
            return compares, ops, None

        ipam.commit_with_retry(self.store, build)

    def get(self, ref: str) -> tuple[ImageRecord, int]:
        record, kv = resolve(self.store, ref, "name")
        return record, kv.mod_revision

    def list_images(self) -> tuple[list[tuple[ImageRecord, int]], int]:
        kvs, revision = self.store.range(IMAGES)
        return [(from_json(ImageRecord, kv.value), kv.mod_revision) for kv in kvs], revision

    def config(self, image_id: str) -> bytes:
        record, _ = resolve(self.store, image_id, "name")
        if record.source:
            return record.config.encode()
        with self.blobs.open(image_id) as f:
            return f.read()

    def record(self, reference: str, manifest_digest: str, config: bytes,
               layers: list[tuple[str, str, int]]) -> ImageRecord:
        """Record an image a registry holds (checked: the config's diff IDs against the
        layers), tagged ``reference``, which moves to it from any other image."""
        try:
            ref = registry.parse_reference(reference)
        except ValueError as e:
            raise Invalid("reference", str(e)) from None
        if not _DIGEST.fullmatch(manifest_digest):
            raise Invalid("manifest_digest", f"{manifest_digest!r} is not sha256:<64 hex>")
        try:
            doc = json.loads(config.decode("utf-8"))
            diff_ids = tuple(doc["rootfs"]["diff_ids"])
        except (ValueError, KeyError, TypeError):
            raise Invalid("config", "not an image config with rootfs.diff_ids") from None
        if len(diff_ids) != len(layers):
            raise Invalid("layers", f"{len(layers)} layer(s), the config has {len(diff_ids)} "
                          "diff ID(s)")
        for i, (digest, media_type, size) in enumerate(layers):
            if not _DIGEST.fullmatch(digest) or not _DIGEST.fullmatch(str(diff_ids[i])):
                raise Invalid(f"layers[{i}].digest", f"{digest!r} is not sha256:<64 hex>")
            if media_type not in registry.GZIP_LAYERS + registry.PLAIN_LAYERS:
                raise Invalid(f"layers[{i}].media_type", f"unsupported {media_type!r}")
            if size < 0:
                raise Invalid(f"layers[{i}].size", "negative")
        image_id = "sha256:" + hashlib.sha256(config).hexdigest()
        record = ImageRecord(
            id=image_id, repo_tags=(ref.name,), layers=diff_ids,
            size=sum(s for _, _, s in layers), source=ref.pinned(manifest_digest),
            config=config.decode(), blob_digests=tuple(d for d, _, _ in layers),
            blob_types=tuple(t for _, t, _ in layers), blob_sizes=tuple(s for _, _, s in layers))
        self._put_records([record])
        return self.get(image_id)[0]

    def access(self, record: ImageRecord) -> registryconfig.RegistryEntry | None:
        """The configured trust and credentials for the registry of ``record`` (None: none)."""
        if not record.source:
            return None
        host = registry.parse_reference(record.source).registry
        try:
            return registryconfig.load(self.registry_config).get(host)
        except registryconfig.RegistryConfigError:
            return None

    def blob_path(self, digest: str) -> str:
        """A blob that belongs to some image (nothing else is served)."""
        if not _DIGEST.fullmatch(digest):
            raise Invalid("digest", f"{digest!r} is not sha256:<64 hex digits>")
        for record, _ in _records(self.store):
            if digest == record.id or digest in record.layers:
                return self.blobs.path(digest)
        raise NotFound("digest", digest)

    def remove(self, ref: str) -> int:
        """Untag ``name:tag`` when the image has other tags; else remove the image (refused
        while a container uses it) and the blobs no other image needs."""
        record, kv = resolve(self.store, ref, "name")
        users = sorted(c.name for c in self._containers() if c.image_id == record.id)
        tag = _tag_of(ref, record)
        if tag is not None and len(record.repo_tags) > 1:
            kept = tuple(t for t in record.repo_tags if t != tag)
            revision = self.store.txn([Compare(kv.key, kv.mod_revision)],
                                      [Put(kv.key, to_json(dataclasses.replace(
                                          record, repo_tags=kept)))])
            if revision is None:
                raise FailedPrecondition(f"image {ref!r} changed meanwhile; try again")
            return revision
        if users:
            raise FailedPrecondition(f"image {ref!r} is used by container(s) {', '.join(users)}; "
                                     "remove them first")
        revision = self.store.txn([Compare(kv.key, kv.mod_revision)], [Delete(kv.key)])
        if revision is None:
            raise FailedPrecondition(f"image {ref!r} changed meanwhile; try again")
        self._collect_blobs()
        return revision

    def save(self, ref: str, path: str) -> None:
        record, _ = resolve(self.store, ref, "name")
        if record.source:
            raise FailedPrecondition(f"image {ref!r} is held by its registry ({record.source}), "
                                     "not by the controller: pull it from there")
        image = imagefmt.Image(id=record.id, repo_tags=record.repo_tags, layers=record.layers,
                               size=record.size)
        imagefmt.export_archive(path, [image], self.blobs)

    def _containers(self) -> list[Container]:
        kvs, _ = self.store.range(CONTAINERS)
        return [from_json(Container, kv.value) for kv in kvs]

    def _collect_blobs(self) -> None:
        needed = {d for r, _ in _records(self.store) for d in (r.id, *r.layers)}
        for digest in self.blobs.digests():
            if digest not in needed:
                self.blobs.remove(digest)


def _tag_of(ref: str, record: ImageRecord) -> str | None:
    """The tag ``ref`` names, when it names the image by a tag rather than by its ID."""
    if record.id.removeprefix("sha256:").startswith(ref.removeprefix("sha256:")):
        return None
    tag = image_name(ref, "name")
    return tag if tag in record.repo_tags else None


def default_blob_dir(db_path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(db_path)) or ".", "blobs")
