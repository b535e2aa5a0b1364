"""Image archives: the test image round-trips through import and export, OCI layouts import to
the same image, and hostile archives are rejected leaving the store as it was."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest
from imagehelp import (
    HOSTILE_LAYERS,
    Hostile,
    Snapshot,
    config_bytes,
    directory,
    file,
    oci_layout,
    save_archive,
    sha256,
    symlink,
    tar_bytes,
)

from sdnctl.api.imagefmt import (
    BlobStore,
    Image,
    ImageFormatError,
    RunConfig,
    export_archive,
    image_run_config,
    import_archive,
    parse_reference,
    runtime_config,
)
from sdnctl.lab.testimage import build_test_image

BUSYBOX = "/bin/busybox"
needs_busybox = pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="needs /bin/busybox")


@pytest.fixture(scope="module")
def test_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    if not os.path.exists(BUSYBOX):
        pytest.skip("needs busybox-static at /bin/busybox")
    path = tmp_path_factory.mktemp("image") / "test.tar"
    return path, build_test_image(str(path))


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A directory holding a sentinel file beside the store: nothing may touch it."""
    (tmp_path / "sentinel").write_bytes(b"keep me\n")
    return tmp_path


def layer_blobs(blobs: BlobStore, image: Image) -> list[bytes]:
    return [Path(blobs.path(d)).read_bytes() for d in image.layers]


# --- references ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "normal"),
    [
        ("busybox", "busybox:latest"),
        ("busybox:1.36", "busybox:1.36"),
        ("library/busybox", "library/busybox:latest"),
        ("my-org/my_app.v2", "my-org/my_app.v2:latest"),
        ("a__b/c--d", "a__b/c--d:latest"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/team/app:v1.2-rc_3", "localhost:5000/team/app:v1.2-rc_3"),
        ("Registry.Example.com/app:Tag_1", "Registry.Example.com/app:Tag_1"),
        ("busybox@sha256:" + "a" * 64, "busybox@sha256:" + "a" * 64),
        ("busybox:1@sha256:" + "b" * 64, "busybox:1@sha256:" + "b" * 64),
        ("a" * 247, "a" * 247 + ":latest"),
    ],
)
def test_parse_reference_normalizes(ref: str, normal: str) -> None:
    assert parse_reference(ref) == normal


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "Busybox",
        "Org/busybox",
        "busybox:",
        ":tag",
        "busybox:-x",
        "busybox:a:b",
        "/busybox",
        "busybox/",
        "a//b",
        "a..b",
        "a-",
        "bu$y",
        " busybox",
        "busybox@sha256:abc",
        "busybox@md5:" + "a" * 32,
        "localhost:port/app",
        "busybox:" + "t" * 129,
        "a" * 256,
    ],
)
def test_parse_reference_rejects(ref: str) -> None:
    with pytest.raises(ValueError, match="invalid image reference") as err:
        parse_reference(ref)
    assert repr(ref) in str(err.value)


# --- config and store ---------------------------------------------------------------------


def test_runtime_config_reads_config_object() -> None:
    config = {
        "config": {
            "Env": ["A=1", "B=2"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hi"],
            "WorkingDir": "/srv",
            "User": "nobody",
        }
    }
    assert runtime_config(json.dumps(config).encode()) == RunConfig(
        env=("A=1", "B=2"),
        entrypoint=("/bin/sh", "-c"),
        cmd=("echo hi",),
        workdir="/srv",
        user="nobody",
    )
    assert runtime_config(b'{"config": {"Cmd": null}}') == RunConfig()
    assert runtime_config(b"{}") == RunConfig()
    with pytest.raises(ImageFormatError, match="Cmd"):
        runtime_config(b'{"config": {"Cmd": "sh"}}')


def test_blob_store_put_verifies_and_is_idempotent(tmp_path: Path) -> None:
    blobs = BlobStore(str(tmp_path / "store"))
    src = tmp_path / "data"
    src.write_bytes(b"hello")
    digest = sha256(b"hello")
    assert stat.S_IMODE(os.stat(blobs.root).st_mode) == 0o700
    with pytest.raises(ImageFormatError, match="not sha256:"):
        blobs.put(str(src), sha256(b"other"))
    assert blobs.digests() == []
    assert blobs.put(str(src), digest) is True
    assert blobs.put(str(src), digest) is False
    assert blobs.has(digest)
    with blobs.open(digest) as f:
        assert f.read() == b"hello"
    assert blobs.digests() == [digest]
    blobs.remove(digest)
    blobs.remove(digest)
    assert blobs.digests() == []
    assert os.listdir(blobs.tmp_dir) == []
    with pytest.raises(ValueError, match="invalid digest"):
        blobs.path("sha256:../../etc/passwd")


# --- round trips --------------------------------------------------------------------------


def test_test_image_is_deterministic(test_archive: tuple[Path, str], tmp_path: Path) -> None:
    path, image_id = test_archive
    again = tmp_path / "again.tar"
    assert build_test_image(str(again)) == image_id
    assert again.read_bytes() == path.read_bytes()


def test_round_trip_keeps_image_id(test_archive: tuple[Path, str], tmp_path: Path) -> None:
    path, image_id = test_archive
    first = BlobStore(str(tmp_path / "first"))
    [image] = import_archive(str(path), first)
    assert image.id == image_id
    assert image.repo_tags == ("sdnctl-test:latest",)
    assert len(image.layers) == 2
    assert image.size == sum(os.path.getsize(first.path(d)) for d in image.layers)
    assert first.digests() == sorted([image.id, *image.layers])
    run = image_run_config(first, image)
    assert run.cmd == ("/bin/sh",)
    assert run.env[0].startswith("PATH=")

    exported, twice = tmp_path / "exported.tar", tmp_path / "twice.tar"
    export_archive(str(exported), [image], first)
    export_archive(str(twice), [image], first)
    assert exported.read_bytes() == twice.read_bytes()
    second = BlobStore(str(tmp_path / "second"))
    assert import_archive(str(exported), second) == [image]
    assert second.digests() == first.digests()
    assert os.listdir(first.tmp_dir) == os.listdir(second.tmp_dir) == []


def test_export_writes_docker_save_layout(test_archive: tuple[Path, str], tmp_path: Path) -> None:
    blobs = BlobStore(str(tmp_path / "store"))
    [image] = import_archive(str(test_archive[0]), blobs)
    exported = tmp_path / "exported.tar"
    export_archive(str(exported), [image], blobs)
    with tarfile.open(exported) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        repositories = json.load(tar.extractfile("repositories"))  # type: ignore[arg-type]
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    top = image.layers[-1][7:]
    assert names == sorted(names)
    assert manifest == [
        {
            "Config": f"{image.id[7:]}.json",
            "RepoTags": ["sdnctl-test:latest"],
            "Layers": [f"{d[7:]}/layer.tar" for d in image.layers],
        }
    ]
    assert repositories == {"sdnctl-test": {"latest": top}}
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")] == []


def test_import_into_store_that_has_the_blobs(
    test_archive: tuple[Path, str], tmp_path: Path
) -> None:
    blobs = BlobStore(str(tmp_path / "store"))
    first = import_archive(str(test_archive[0]), blobs)
    assert import_archive(str(test_archive[0]), blobs) == first
    assert len(blobs.digests()) == 3


def test_gzipped_archive_imports(test_archive: tuple[Path, str], tmp_path: Path) -> None:
    """``docker save busybox | gzip > image.tar.gz`` is how archives often travel."""
    gzipped = tmp_path / "test.tar.gz"
    gzipped.write_bytes(gzip.compress(test_archive[0].read_bytes(), compresslevel=1))
    [image] = import_archive(str(gzipped), BlobStore(str(tmp_path / "store")))
    assert image.id == test_archive[1]


@pytest.mark.parametrize("corrupt", [False, True])
def test_docker_save_with_blob_paths(tmp_path: Path, corrupt: bool) -> None:
    """Docker 25+ names layers and config ``blobs/sha256/<hex>``; the name is a digest to check."""
    layer = tar_bytes([file("f", b"data")])
    config = config_bytes([sha256(layer)])
    layer_name = f"blobs/sha256/{sha256(layer)[7:]}"
    manifest = [
        {
            "Config": f"blobs/sha256/{sha256(config)[7:]}",
            "RepoTags": ["x:1"],
            "Layers": [layer_name],
        }
    ]
    extra = [
        file(f"blobs/sha256/{sha256(config)[7:]}", config),
        file(layer_name, layer + b"\0" * 512 if corrupt else layer),
    ]
    path = save_archive(tmp_path / "a.tar", [], manifest=manifest, extra=extra)
    blobs = BlobStore(str(tmp_path / "store"))
    if corrupt:
        with pytest.raises(ImageFormatError, match=f"'{layer_name}'.*content is sha256:"):
            import_archive(str(path), blobs)
        assert blobs.digests() == []
    else:
        [image] = import_archive(str(path), blobs)
        assert image.layers == (sha256(layer),)


@pytest.mark.parametrize("nested", [False, True], ids=["manifest", "nested-index"])
def test_oci_layout_imports_same_image(
    test_archive: tuple[Path, str], tmp_path: Path, nested: bool
) -> None:
    source = BlobStore(str(tmp_path / "source"))
    [image] = import_archive(str(test_archive[0]), source)
    config = Path(source.path(image.id)).read_bytes()
    layout = oci_layout(
        tmp_path / "oci.tar",
        config,
        layer_blobs(source, image),
        "docker.io/library/sdnctl-oci:v1",
        nested=nested,
    )
    blobs = BlobStore(str(tmp_path / "store"))
    [oci_image] = import_archive(str(layout), blobs)
    assert oci_image.id == image.id
    assert oci_image.layers == image.layers
    assert oci_image.repo_tags == ("sdnctl-oci:v1",)
    assert blobs.digests() == source.digests()  # layers stored uncompressed, by diff_id


def test_archive_with_two_tags_for_one_image(tmp_path: Path) -> None:
    layer = tar_bytes([file("f")])
    config = config_bytes([sha256(layer)])
    name = f"{sha256(config)[7:]}.json"
    entry = {"Config": name, "Layers": ["layer0/layer.tar"]}
    manifest = [{**entry, "RepoTags": ["a:1"]}, {**entry, "RepoTags": ["b", "a:1"]}]
    path = save_archive(tmp_path / "a.tar", [layer], manifest=manifest)
    [image] = import_archive(str(path), BlobStore(str(tmp_path / "store")))
    assert image.repo_tags == ("a:1", "b:latest")


# --- hostile archives ---------------------------------------------------------------------


def assert_rejected(path: Path, blobs: BlobStore, out: Path, names: str) -> ImageFormatError:
    before = Snapshot.take(blobs, out / "sentinel")
    with pytest.raises(ImageFormatError) as err:
        import_archive(str(path), blobs)
    assert names in str(err.value)
    assert str(path) in str(err.value)
    assert Snapshot.take(blobs, out / "sentinel") == before
    return err.value


@pytest.fixture
def store_with_test_image(test_archive: tuple[Path, str], out: Path) -> tuple[BlobStore, Image]:
    blobs = BlobStore(str(out / "store"))
    [image] = import_archive(str(test_archive[0]), blobs)
    return blobs, image


@pytest.mark.parametrize("case", HOSTILE_LAYERS, ids=lambda c: c.id)
def test_hostile_layer_is_rejected(
    case: Hostile, store_with_test_image: tuple[BlobStore, Image], out: Path
) -> None:
    """A good new layer, then the hostile one, on top of a layer the store already has: the
    store keeps its blobs and gains none."""
    blobs, image = store_with_test_image
    shared = layer_blobs(blobs, image)[0]
    new = tar_bytes([file("new-file", b"new")])
    path = save_archive(out / "hostile.tar", [shared, new, tar_bytes(case.entries(out))])
    err = assert_rejected(path, blobs, out, case.message(out))
    assert "layer sha256:" in str(err)


def test_diff_id_mismatch_is_rejected(
    store_with_test_image: tuple[BlobStore, Image], out: Path
) -> None:
    blobs, _ = store_with_test_image
    layer = tar_bytes([file("f")])
    path = save_archive(out / "a.tar", [layer], diff_ids=[sha256(b"something else")])
    assert_rejected(path, blobs, out, "'layer0/layer.tar'")


def test_config_digest_mismatch_is_rejected(tmp_path: Path, out: Path) -> None:
    blobs = BlobStore(str(out / "store"))
    layer = tar_bytes([file("f")])
    manifest = [{"Config": "0" * 64 + ".json", "RepoTags": [], "Layers": ["layer0/layer.tar"]}]
    config = file("0" * 64 + ".json", config_bytes([sha256(layer)]))
    path = save_archive(out / "a.tar", [layer], manifest=manifest, extra=[config])
    assert_rejected(path, blobs, out, "'" + "0" * 64 + ".json'")


@pytest.mark.parametrize(
    ("manifest_config", "manifest_layer", "extra", "names"),
    [
        ("../../x", None, [], "'../../x'"),
        ("/etc/passwd", None, [], "'/etc/passwd'"),
        (None, "../x", [], "'../x'"),
        (None, None, [file("../x")], "'../x'"),
        (None, None, [file("/x")], "'/x'"),
        (None, None, [symlink("link", "/etc")], "'link'"),
        (None, None, [file("layer0/layer.tar", b"again")], "'layer0/layer.tar'"),
        (None, "missing/layer.tar", [], "'missing/layer.tar'"),
    ],
)
def test_hostile_archive_members_are_rejected(
    out: Path, manifest_config: str | None, manifest_layer: str | None, extra: list, names: str
) -> None:
    blobs = BlobStore(str(out / "store"))
    layer = tar_bytes([file("f")])
    config = config_bytes([sha256(layer)])
    manifest = [
        {
            "Config": manifest_config or f"{sha256(config)[7:]}.json",
            "RepoTags": ["x:1"],
            "Layers": [manifest_layer or "layer0/layer.tar"],
        }
    ]
    path = save_archive(out / "a.tar", [layer], manifest=manifest, extra=extra)
    assert_rejected(path, blobs, out, names)


def test_oci_blob_digest_mismatch_is_rejected(out: Path) -> None:
    blobs = BlobStore(str(out / "store"))
    layer = tar_bytes([file("f")])
    good = oci_layout(out / "good.tar", config_bytes([sha256(layer)]), [layer], "x:1")
    bad = out / "bad.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isreg() else b""  # type: ignore[union-attr]
            if member.name.startswith("blobs/sha256/") and data[:2] == b"\x1f\x8b":
                data = data[:-1] + bytes([data[-1] ^ 1])
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if member.isreg() else None)
    assert_rejected(bad, blobs, out, "blobs/sha256/")


def test_archive_without_images_is_rejected(out: Path) -> None:
    blobs = BlobStore(str(out / "store"))
    assert_rejected(save_archive(out / "a.tar", [], manifest=[]), blobs, out, "no images")
    (out / "b.tar").write_bytes(tar_bytes([directory("d")]))
    assert_rejected(out / "b.tar", blobs, out, "not an image archive")
    (out / "c.tar").write_bytes(b"not a tar at all")
    assert_rejected(out / "c.tar", blobs, out, "cannot read")


def test_failed_commit_removes_only_what_it_added(
    store_with_test_image: tuple[BlobStore, Image], out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails while the import moves blobs into place (a full disk, say): blobs this
    import added go again, blobs that were there before stay."""
    blobs, image = store_with_test_image
    shared = layer_blobs(blobs, image)[0]
    path = save_archive(out / "a.tar", [shared, tar_bytes([file("a")]), tar_bytes([file("b")])])
    before = Snapshot.take(blobs, out / "sentinel")
    adopt, calls = blobs.adopt, []

    def failing_adopt(tmp: str, digest: str) -> bool:
        calls.append(digest)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return adopt(tmp, digest)

    monkeypatch.setattr(blobs, "adopt", failing_adopt)
    with pytest.raises(OSError, match="No space"):
        import_archive(str(path), blobs)
    assert calls[0] == image.layers[0]  # already there: kept
    assert Snapshot.take(blobs, out / "sentinel") == before


@pytest.mark.parametrize("data", [b"\x1f\x8b", b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"garbage"])
def test_a_truncated_or_corrupt_gzip_archive_is_refused(tmp_path: Path, data: bytes) -> None:
    """Found by the RPC fuzzer: a gzip stream that ends early is an archive error."""
    path = tmp_path / "bad.tar.gz"
    path.write_bytes(data)
    blobs = BlobStore(str(tmp_path / "blobs"))
    with pytest.raises(ImageFormatError, match="cannot read the archive"):
        import_archive(str(path), blobs)
    assert blobs.digests() == []
