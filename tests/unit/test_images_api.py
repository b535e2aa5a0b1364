"""Images through the gRPC API: load (streamed), list, resolve on container create, refuse to
remove an image in use, untag, save, and what agents fetch (config, layers, nothing else)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from apitest import TIMEOUT, Api

from sdnctl.lab.testimage import build_test_image
from sdnctl.v1 import sdnctl_pb2 as pb

TAG = "sdnctl-test:latest"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("img") / "image.tar"
    return path, build_test_image(str(path), TAG)


def chunks(path: Path, size: int = 65536) -> Iterator[pb.ImageChunk]:
    data = path.read_bytes()
    for i in range(0, len(data), size):
        yield pb.ImageChunk(data=data[i:i + size])


def load(api: Api, path: Path) -> pb.LoadImageResponse:
    return api.ctl.LoadImage(chunks(path), timeout=TIMEOUT)


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()  # type: ignore[no-any-return,attr-defined]


def test_load_list_and_run_from_an_image(api: Api, archive: tuple[Path, str]) -> None:
    path, image_id = archive
    loaded = load(api, path).images
    assert [(i.id, list(i.repo_tags)) for i in loaded] == [(image_id, [TAG])]
    assert len(loaded[0].layers) >= 2
    listed = api.ctl.ListImages(pb.ListRequest(), timeout=TIMEOUT).images
    assert [i.id for i in listed] == [image_id]

    api.host("h1")
    api.network("front")
    ctr = api.container("web", image="sdnctl-test", command=[])  # tag defaults to latest
    assert ctr.image_id == image_id and list(ctr.command) == []  # the image's cmd applies
    assert api.ctl.GetImage(pb.ImageRef(name=image_id[7:19]), timeout=TIMEOUT).id == image_id

    # An image in use cannot go; a missing image cannot be run.
    assert code_of(lambda: api.ctl.RemoveImage(pb.ImageRef(name=TAG), timeout=TIMEOUT)) == \
        grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: api.container("other", image="nope:1")) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: api.container("bad", image="UPPER/Case")) == \
        grpc.StatusCode.INVALID_ARGUMENT
    api.delete("Container", "web")
    api.ctl.RemoveImage(pb.ImageRef(name=TAG), timeout=TIMEOUT)
    assert list(api.ctl.ListImages(pb.ListRequest(), timeout=TIMEOUT).images) == []


def test_agents_fetch_config_and_layers_only(api: Api, archive: tuple[Path, str]) -> None:
    path, image_id = archive
    image = load(api, path).images[0]
    fetched = api.sync.FetchImage(pb.ImageRef(name=image_id), timeout=TIMEOUT)
    assert "sha256:" + hashlib.sha256(fetched.config).hexdigest() == image_id
    for layer in image.layers:
        data = b"".join(c.data for c in api.sync.FetchBlob(pb.BlobRequest(digest=layer),
                                                           timeout=TIMEOUT))
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer
    stranger = "sha256:" + "0" * 64
    assert code_of(lambda: list(api.sync.FetchBlob(pb.BlobRequest(digest=stranger),
                                                   timeout=TIMEOUT))) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: list(api.sync.FetchBlob(pb.BlobRequest(digest="../../etc/passwd"),
                                                   timeout=TIMEOUT))) == \
        grpc.StatusCode.INVALID_ARGUMENT


def test_save_round_trip_and_a_bad_archive_changes_nothing(
        api: Api, archive: tuple[Path, str], tmp_path: Path) -> None:
    path, image_id = archive
    load(api, path)
    saved = b"".join(c.data for c in api.ctl.SaveImage(pb.ImageRef(name=TAG), timeout=TIMEOUT))
    (tmp_path / "saved.tar").write_bytes(saved)
    api.ctl.RemoveImage(pb.ImageRef(name=TAG), timeout=TIMEOUT)
    assert [i.id for i in load(api, tmp_path / "saved.tar").images] == [image_id]

    before = api.store.revision()
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    assert code_of(lambda: load(api, tmp_path / "junk.tar")) == grpc.StatusCode.INVALID_ARGUMENT
    assert api.store.revision() == before


def test_a_second_tag_is_untagged_not_removed(api: Api, archive: tuple[Path, str],
                                             tmp_path: Path) -> None:
    path, image_id = archive
    retag(path, tmp_path / "other.tar", "other:v1")
    load(api, path)
    load(api, tmp_path / "other.tar")  # the same content: the same ID, one more tag
    tags = api.ctl.GetImage(pb.ImageRef(name=TAG), timeout=TIMEOUT).repo_tags
    assert sorted(tags) == ["other:v1", TAG]
    api.ctl.RemoveImage(pb.ImageRef(name="other:v1"), timeout=TIMEOUT)
    assert list(api.ctl.GetImage(pb.ImageRef(name=image_id), timeout=TIMEOUT).repo_tags) == [TAG]


def retag(source: Path, dest: Path, tag: str) -> None:
    """The same archive with another tag in its manifest."""
    with tarfile.open(source) as src, tarfile.open(dest, "w") as out:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
            if member.name == "manifest.json":
                manifest = json.loads(data)
                manifest[0]["RepoTags"] = [tag]
                data = json.dumps(manifest).encode()
                member.size = len(data)
            out.addfile(member, io.BytesIO(data) if member.isfile() else None)


def test_record_a_registry_image_and_hand_agents_its_source(api: Api) -> None:
    diff_ids = ["sha256:" + "a" * 64, "sha256:" + "b" * 64]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    layers = [pb.RegistryBlob(digest="sha256:" + c * 64, media_type=
                              "application/vnd.docker.image.rootfs.diff.tar.gzip", size=10)
              for c in "cd"]
    manifest = "sha256:" + "e" * 64
    good = pb.RecordImageRequest(reference="registry.lab:5000/app:1.0", manifest_digest=manifest,
                                 config=config, layers=layers)
    bad = {
        "reference": pb.RecordImageRequest(reference="app:1.0", manifest_digest=manifest,
                                           config=config, layers=layers),
        "manifest_digest": pb.RecordImageRequest(reference=good.reference,
                                                 manifest_digest="sha256:x", config=config,
                                                 layers=layers),
        "config": pb.RecordImageRequest(reference=good.reference, manifest_digest=manifest,
                                        config=b"\xff\xfe", layers=layers),
        "layers": pb.RecordImageRequest(reference=good.reference, manifest_digest=manifest,
                                        config=config, layers=layers[:1]),
    }
    for field, request in bad.items():
        with pytest.raises(grpc.RpcError) as info:
            api.ctl.RecordImage(request, timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert field in info.value.details(), info.value.details()  # type: ignore[attr-defined]
    assert list(api.ctl.ListImages(pb.ListRequest(), timeout=TIMEOUT).images) == []

    recorded = api.ctl.RecordImage(good, timeout=TIMEOUT)
    assert recorded.id == "sha256:" + hashlib.sha256(config).hexdigest()
    assert list(recorded.repo_tags) == ["registry.lab:5000/app:1.0"]
    assert recorded.source == f"registry.lab:5000/app@{manifest}"
    fetched = api.sync.FetchImage(pb.ImageRef(name="registry.lab:5000/app:1.0"), timeout=TIMEOUT)
    assert fetched.config == config and list(fetched.layers) == diff_ids
    assert [b.digest for b in fetched.blobs] == [b.digest for b in layers]
    # the controller has no blob of it: an agent goes to the registry, never to FetchBlob
    assert code_of(lambda: list(api.sync.FetchBlob(pb.BlobRequest(digest=layers[0].digest),
                                                   timeout=TIMEOUT))) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: list(api.ctl.SaveImage(pb.ImageRef(name=recorded.id),
                                                  timeout=TIMEOUT))) == \
        grpc.StatusCode.FAILED_PRECONDITION
