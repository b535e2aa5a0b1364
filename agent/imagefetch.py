"""Where the agent gets an image's config and layers: the controller, or the image's registry.

Design note. The controller answers ``FetchImage`` with the config and the layer list; for an
image it holds (``image load`` without a registry) the agent then streams each layer from it
(``FetchBlob``). For an image a registry holds, the answer also carries the pinned manifest
reference, the manifest's layer descriptors and the trust and credentials configured for that
registry: the agent pulls each layer from the registry itself (the controller is out of the
data path) and hands the image store the uncompressed tar, the blob digest and the diff ID both
checked on the way (:func:`sdnctl.api.registry.layer_chunks`). When the controller sends no
credentials for a registry, the agent's own registry file is used, if it has one; its ``netns``
field is ignored here: an agent reaches registries from its host's namespace, as a real host.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from sdnctl.api import registry, registryconfig
from sdnctl.v1 import sdnctl_pb2 as pb

if TYPE_CHECKING:  # (the generated stubs import grpcio: the agent calls through wire)
    from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

log = logging.getLogger("sdnctl.agent.images")


class GrpcFetcher:
    """Images and layers (agent.imagestore.Fetcher) from the controller, through whichever
    replica the agent uses at the time, or from the image's registry."""

    def __init__(self, sync: Callable[[], pb_grpc.HostSyncStub],
                 registry_config: str | None = None) -> None:
        self.sync = sync
        self.registry_config = registry_config
        self._lock = threading.Lock()
        # diff ID -> (client, repository, layer): filled by image(), used by blob()
        self._remote: dict[str, tuple[registry.Client, str, registry.Layer]] = {}

    def image(self, image_id: str) -> tuple[bytes, tuple[str, ...]]:
        msg = self.sync().FetchImage(pb.ImageRef(name=image_id), timeout=60)
        if msg.source:
            self._learn(msg)
        return msg.config, tuple(msg.layers)

    def _learn(self, msg: pb.Image) -> None:
        ref = registry.parse_reference(msg.source)
        if len(msg.blobs) != len(msg.layers):
            raise registry.RegistryError(f"image {msg.id}: {len(msg.blobs)} blob(s) for "
                                         f"{len(msg.layers)} layer(s)")
        client = registry.Client(self._endpoint(ref.registry, msg.access))
        with self._lock:
            for blob, diff_id in zip(msg.blobs, msg.layers, strict=True):
                self._remote[diff_id] = (client, ref.repository, registry.Layer(
                    blob.digest, blob.media_type, blob.size, diff_id))

    def _endpoint(self, name: str, access: pb.RegistryAccess) -> registry.Endpoint:
        if access.registry == name:
            return registry.Endpoint(registry=name, ca_pem=access.ca_pem,
                                     username=access.username, password=access.password,
                                     insecure=access.insecure)
        try:
            return registryconfig.endpoint(name, use_netns=False, path=self.registry_config)
        except registryconfig.RegistryConfigError as e:
            log.warning("registry configuration unreadable, reaching %s anonymously: %s", name, e)
            return registry.Endpoint(registry=name)

    def blob(self, digest: str) -> Iterator[bytes]:
        with self._lock:
            remote = self._remote.get(digest)
        if remote is not None:
            client, repository, layer = remote
            yield from registry.layer_chunks(client, repository, layer)
            return
        for chunk in self.sync().FetchBlob(pb.BlobRequest(digest=digest), timeout=600):
            yield chunk.data
