"""Images between a registry and the controller: ``image pull`` records, ``image push`` uploads.

Design note. A pull moves no layer: the caller resolves the reference at the registry (manifest,
through an index for this platform; the config, digest checked) and asks the controller to
record the image (``RecordImage``); agents pull the layers when a container needs them. A push
reads the image back from the controller as a ``docker save`` archive (``SaveImage``), checks it
as ``image load`` does (:func:`sdnctl.api.imagefmt.import_archive` into a scratch blob store),
then uploads gzip-compressed layers, the config and a Docker v2 schema 2 manifest, which
``docker pull`` of any version since 1.10 reads.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from sdnctl.api import imagefmt, registry, registryconfig
from sdnctl.v1 import sdnctl_pb2 as pb

if TYPE_CHECKING:  # (the generated stubs import grpcio; the CLI calls through sdnctl.api.wire)
    from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

TIMEOUT = 600.0
GZIP_LEVEL = 1  # layers are pushed often and pulled at once: speed over a few percent of size


def client_for(reference: registry.Reference, insecure: bool = False) -> registry.Client:
    """A client for the reference's registry, as this machine's registry file configures it."""
    return registry.Client(registryconfig.endpoint(reference.registry, insecure=insecure))


def pull(api: pb_grpc.ControllerStub, ref: str, insecure: bool = False) -> pb.Image:
    """Resolve ``ref`` at its registry and record the image with the controller."""
    reference = registry.parse_reference(ref)
    resolved = client_for(reference, insecure).resolve(reference)
    request = pb.RecordImageRequest(
        reference=reference.name if reference.tag else
        f"{reference.registry}/{reference.repository}:{resolved.manifest_digest[7:19]}",
        manifest_digest=resolved.manifest_digest, config=resolved.config,
        layers=[pb.RegistryBlob(digest=layer.digest, media_type=layer.media_type,
                                size=layer.size) for layer in resolved.layers])
    return api.RecordImage(request, timeout=60)  # type: ignore[no-any-return]


def push(api: pb_grpc.ControllerStub, name: str, ref: str, insecure: bool = False,
         scratch_dir: str | None = None) -> str:
    """Upload the controller's image ``name`` as ``ref``; the manifest's digest."""
    reference = registry.parse_reference(ref)
    if reference.digest:
        raise ValueError(f"{ref!r}: push to a tag, not a digest")
    client = client_for(reference, insecure)
    workdir = tempfile.mkdtemp(prefix="sdnctl-push-", dir=scratch_dir)
    try:
        held = api.GetImage(pb.ImageRef(name=name), timeout=60)
        if held.source:  # a registry's image: copied from there, the controller has no blob
            return copy_image(registry.parse_reference(held.source), client, reference,
                              workdir, insecure)
        archive = os.path.join(workdir, "image.tar")
        with open(archive, "wb") as f:
            for chunk in api.SaveImage(pb.ImageRef(name=name), timeout=TIMEOUT):
                f.write(chunk.data)
        blobs = imagefmt.BlobStore(os.path.join(workdir, "blobs"))
        images = imagefmt.import_archive(archive, blobs)
        os.unlink(archive)
        if len(images) != 1:
            raise ValueError(f"image {name!r}: the controller sent {len(images)} images")
        return push_image(client, reference, images[0], blobs, workdir)[0]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def copy_image(source: registry.Reference, client: registry.Client,
               reference: registry.Reference, workdir: str, insecure: bool = False) -> str:
    """Copy the manifest ``source`` pins (its config and layers) to ``reference``, byte for
    byte: the same manifest digest."""
    src = client_for(source, insecure)
    data, media_type, _ = src.get_manifest(source.repository, source.ref)
    doc = json.loads(data)
    for desc in [doc["config"], *doc["layers"]]:
        path = os.path.join(workdir, "blob")
        src.fetch_blob(source.repository, desc["digest"], path)
        client.push_blob(reference.repository, path, desc["digest"])
        os.unlink(path)
    return client.put_manifest(reference.repository, reference.tag or "latest", data,
                               media_type)


def push_image(client: registry.Client, reference: registry.Reference, image: imagefmt.Image,
               blobs: imagefmt.BlobStore, workdir: str) -> tuple[str, list[registry.Layer]]:
    """Upload one imported image (uncompressed layers in ``blobs``) to ``reference``: the
    manifest's digest and the layers as the registry now holds them."""
    layers = []
    for diff_id in image.layers:
        packed = os.path.join(workdir, "layer.gz")
        sha = hashlib.sha256()
        with blobs.open(diff_id) as src, open(packed, "wb") as raw, gzip.GzipFile(
                fileobj=_Hashing(raw, sha), mode="wb", compresslevel=GZIP_LEVEL,  # type: ignore[arg-type]
                mtime=0) as out:
            shutil.copyfileobj(src, out, registry.CHUNK)
        digest = "sha256:" + sha.hexdigest()
        client.push_blob(reference.repository, packed, digest)
        layers.append(registry.Layer(digest, registry.DOCKER_LAYER_GZIP,
                                     os.path.getsize(packed), diff_id))
        os.unlink(packed)
    with blobs.open(image.id) as f:
        config = f.read()
    client.push_bytes(reference.repository, config)
    manifest = {"schemaVersion": 2, "mediaType": registry.DOCKER_MANIFEST,
                "config": {"mediaType": registry.DOCKER_CONFIG, "size": len(config),
                           "digest": image.id},
                "layers": [{"mediaType": layer.media_type, "size": layer.size,
                            "digest": layer.digest} for layer in layers]}
    data = json.dumps(manifest, indent=3).encode()
    return client.put_manifest(reference.repository, reference.tag or "latest", data,
                               registry.DOCKER_MANIFEST), layers


class _Hashing:
    """A write-only file that hashes what passes through it."""

    def __init__(self, out: object, sha: Any) -> None:
        self.out = out
        self.sha = sha

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.out.write(data)  # type: ignore[attr-defined, no-any-return]

    def flush(self) -> None:
        self.out.flush()  # type: ignore[attr-defined]
