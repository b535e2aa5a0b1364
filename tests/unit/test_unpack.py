"""Unpacking layers: what the tar says is what lands on disk (contents, modes, owners, times,
links, overlayfs whiteouts), and nothing a hostile tar says lands outside the destination, even
when the check is bypassed."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from imagehelp import (
    HOSTILE_LAYERS,
    Entry,
    Hostile,
    directory,
    file,
    hardlink,
    special,
    symlink,
    tar_bytes,
)

from sdnctl.api.imagefmt import (
    OPAQUE_XATTR,
    BlobStore,
    ImageFormatError,
    extract_members,
    import_archive,
    unpack_layer,
)
from sdnctl.lab.testimage import APPLETS, MTIME, build_test_image

BUSYBOX = "/bin/busybox"
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="unpacking owners and whiteouts needs root")


def xattrs_supported(path: Path) -> bool:
    probe = path / "xattr-probe"
    probe.mkdir()
    try:
        os.setxattr(probe, OPAQUE_XATTR, b"y")
        return True
    except OSError:
        return False
    finally:
        probe.rmdir()


def overlay_unavailable(tmp: Path) -> str | None:
    """Why overlayfs cannot be mounted here, or None: a mount of empty directories in a private
    mount namespace, independent of our unpacking (whose bugs must fail, not skip, the test)."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = tmp / "overlay-probe"
    for name in ("lower", "upper", "work", "merged"):
        (probe / name).mkdir(parents=True)
    options = f"lowerdir={probe}/lower,upperdir={probe}/upper,workdir={probe}/work"
    done = subprocess.run(["unshare", "-m", "mount", "-t", "overlay", "overlay", "-o", options,
                           f"{probe}/merged"], capture_output=True, text=True, check=False)
    shutil.rmtree(probe)
    return None if done.returncode == 0 else f"cannot mount overlayfs here: {done.stderr.strip()}"


@pytest.fixture(scope="module")
def test_layers(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    if not os.path.exists(BUSYBOX):
        pytest.skip("needs busybox-static at /bin/busybox")
    tmp = tmp_path_factory.mktemp("layers")
    build_test_image(str(tmp / "test.tar"))
    blobs = BlobStore(str(tmp / "store"))
    [image] = import_archive(str(tmp / "test.tar"), blobs)
    return [blobs.path(d) for d in image.layers]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    (tmp_path / "sentinel").write_bytes(b"keep me\n")
    return tmp_path


def write_layer(path: Path, entries: list[Entry]) -> str:
    path.write_bytes(tar_bytes(entries))
    return str(path)


def snapshot(out: Path) -> tuple[list[str], bytes, int, list[str]]:
    sentinel = out / "sentinel"
    return (
        sorted(os.listdir(out)),
        sentinel.read_bytes(),
        sentinel.stat().st_mtime_ns,
        os.listxattr(out),
    )


# --- the test image -----------------------------------------------------------------------


@needs_root
def test_unpack_base_layer(test_layers: list[str], tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    unpack_layer(test_layers[0], str(rootfs))
    busybox = rootfs / "bin/busybox"
    assert busybox.read_bytes() == Path(BUSYBOX).read_bytes()
    assert stat.S_IMODE(busybox.lstat().st_mode) == 0o755
    assert busybox.lstat().st_mtime == MTIME
    for applet in APPLETS:
        assert os.readlink(rootfs / "bin" / applet) == "busybox"
    assert (rootfs / "etc/passwd").read_text().startswith("root:x:0:0:")
    assert (rootfs / "etc/sdnctl-image").read_text() == "sdnctl-test:latest\n"
    assert stat.S_IMODE((rootfs / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((rootfs / "root").stat().st_mode) == 0o700
    assert (rootfs / "bin").stat().st_mtime == MTIME  # set after its applets were written
    assert sorted(os.listdir(tmp_path)) == ["rootfs"]  # the temp tree was renamed, not left


@needs_root
def test_unpack_upper_layer_makes_overlay_whiteouts(test_layers: list[str], tmp_path: Path) -> None:
    if not xattrs_supported(tmp_path):
        pytest.skip(f"{tmp_path} does not support trusted.* xattrs")
    rootfs = tmp_path / "rootfs"
    unpack_layer(test_layers[1], str(rootfs))
    whiteout = (rootfs / "etc/sdnctl-test-removed").lstat()
    assert stat.S_ISCHR(whiteout.st_mode)
    assert whiteout.st_rdev == os.makedev(0, 0)
    assert os.getxattr(rootfs / "opt/opaque", OPAQUE_XATTR) == b"y"
    assert sorted(os.listdir(rootfs / "opt/opaque")) == ["new-file"]
    assert sorted(os.listdir(rootfs / "etc")) == ["sdnctl-test-removed"]
    assert (rootfs / "layer2-marker").read_text() == "layer 2\n"


@needs_root
def test_overlay_of_test_image_runs_busybox(test_layers: list[str], tmp_path: Path) -> None:
    """Behaviour, not configuration: mount the two layers with overlayfs in a private mount
    namespace and look through the merged tree from inside a chroot."""
    if not xattrs_supported(tmp_path):
        pytest.skip(f"{tmp_path} does not support trusted.* xattrs")
    if why := overlay_unavailable(tmp_path):
        pytest.skip(why)
    lower = [tmp_path / "l0", tmp_path / "l1"]
    for blob, dest in zip(test_layers, lower, strict=True):
        unpack_layer(blob, str(dest))
    for name in ("upper", "work", "merged"):
        (tmp_path / name).mkdir()
    options = f"lowerdir={lower[1]}:{lower[0]},upperdir={tmp_path}/upper,workdir={tmp_path}/work"
    script = (
        f"mount -t overlay overlay -o {options} {tmp_path}/merged\n"
        f"exec chroot {tmp_path}/merged /bin/sh -c "
        "'cat /etc/sdnctl-image /layer2-marker; ls /opt/opaque; "
        "test -e /etc/sdnctl-test-removed && echo not-removed; echo done'"
    )
    # The probe mounted overlayfs: a failure from here on is our layers' fault.
    result = subprocess.run(["unshare", "-m", "sh", "-e", "-c", script], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["sdnctl-test:latest", "layer", "2", "new-file", "done"]


# --- crafted layers -----------------------------------------------------------------------


@needs_root
def test_unpack_keeps_metadata_and_links(out: Path) -> None:
    layer = write_layer(
        out / "layer.tar",
        [
            directory("./"),
            directory("d", mode=0o755),
            file("./d/f", b"data", mode=0o640, uid=1234, gid=5678),
            hardlink("d/link", "d/f"),
            symlink("abs", "/bin/busybox"),
            symlink("rel", "d/f"),
            symlink("dangling", "no/such/file"),
            file("suid", b"#!", mode=0o4755),
            file("sgid", b"#!", mode=0o2755),
            directory("sticky", mode=0o1777),
            directory("setgid-dir", mode=0o2775),
            special("fifo", tarfile.FIFOTYPE, mode=0o620),
            file("late/child", b"c"),
            directory("late", mode=0o711, mtime=1_400_000_000),
            directory("d", mode=0o750, mtime=1_500_000_000),  # repeated: the last one wins
        ],
    )
    rootfs = out / "rootfs"
    unpack_layer(layer, str(rootfs))
    f = (rootfs / "d/f").lstat()
    assert (rootfs / "d/f").read_bytes() == b"data"
    assert (stat.S_IMODE(f.st_mode), f.st_uid, f.st_gid) == (0o640, 1234, 5678)
    assert f.st_ino == (rootfs / "d/link").lstat().st_ino and f.st_nlink == 2
    assert os.readlink(rootfs / "abs") == "/bin/busybox"
    assert os.readlink(rootfs / "rel") == "d/f"
    assert os.readlink(rootfs / "dangling") == "no/such/file"
    assert stat.S_IMODE((rootfs / "suid").stat().st_mode) == 0o755  # setuid stripped
    assert stat.S_IMODE((rootfs / "sgid").stat().st_mode) == 0o755
    assert stat.S_IMODE((rootfs / "sticky").stat().st_mode) == 0o1777
    assert stat.S_IMODE((rootfs / "setgid-dir").stat().st_mode) == 0o2775
    fifo = (rootfs / "fifo").lstat()
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o620
    late = (rootfs / "late").stat()
    assert (stat.S_IMODE(late.st_mode), late.st_mtime) == (0o711, 1_400_000_000)
    d = (rootfs / "d").stat()
    assert (stat.S_IMODE(d.st_mode), d.st_mtime) == (0o750, 1_500_000_000)


@needs_root
def test_opaque_marker_before_its_directory(out: Path) -> None:
    if not xattrs_supported(out):
        pytest.skip(f"{out} does not support trusted.* xattrs")
    layer = write_layer(
        out / "layer.tar",
        [file("a/.wh..wh..opq", b""), directory("a", mode=0o700), file("a/.wh.b", b"")],
    )
    unpack_layer(layer, str(out / "rootfs"))
    assert os.getxattr(out / "rootfs/a", OPAQUE_XATTR) == b"y"
    assert stat.S_IMODE((out / "rootfs/a").stat().st_mode) == 0o700
    assert os.listdir(out / "rootfs/a") == ["b"]


def test_unpack_refuses_existing_dest(out: Path) -> None:
    layer = write_layer(out / "layer.tar", [file("f")])
    (out / "rootfs").mkdir()
    with pytest.raises(FileExistsError):
        unpack_layer(layer, str(out / "rootfs"))
    assert os.listdir(out / "rootfs") == []


def test_unpack_rejects_a_non_tar(out: Path) -> None:
    (out / "layer.tar").write_bytes(b"\x1f\x8b compressed, or garbage")
    with pytest.raises(ImageFormatError, match="not a tar"):
        unpack_layer(str(out / "layer.tar"), str(out / "rootfs"))
    assert sorted(os.listdir(out)) == ["layer.tar", "sentinel"]


# --- hostile layers -----------------------------------------------------------------------


@pytest.mark.parametrize("case", HOSTILE_LAYERS, ids=lambda c: c.id)
def test_unpack_rejects_hostile_layer(case: Hostile, out: Path) -> None:
    layer = write_layer(out / "layer.tar", case.entries(out))
    before = snapshot(out)
    with pytest.raises(ImageFormatError) as err:
        unpack_layer(layer, str(out / "rootfs"))
    assert case.message(out) in str(err.value)
    assert snapshot(out) == before  # no rootfs, no rootfs.tmp-*, sentinel untouched


BYPASS = [
    ("dotdot", lambda out: [file("../evil", b"pwned")]),
    ("absolute", lambda out: [file(str(out / "evil"), b"pwned")]),
    ("through-abs-symlink", lambda out: [symlink("a", str(out)), file("a/evil", b"pwned")]),
    ("through-rel-symlink", lambda out: [symlink("a", ".."), file("a/evil", b"pwned")]),
    ("dir-through-symlink", lambda out: [symlink("a", str(out)), directory("a/evil")]),
    ("replace-symlink", lambda out: [symlink("s", str(out / "sentinel")), file("s", b"pwned")]),
    ("replace-file", lambda out: [file("f", b"1"), file("f", b"2")]),
    ("hardlink-via-symlink", lambda out: [symlink("s", str(out)), hardlink("h", "s/sentinel")]),
    ("hardlink-climbs", lambda out: [hardlink("h", "../sentinel")]),
    ("hardlink-to-symlink", lambda out: [symlink("s", str(out / "sentinel")), hardlink("h", "s")]),
    ("whiteout-via-symlink", lambda out: [symlink("a", str(out)), file("a/.wh.evil", b"")]),
    ("opaque-via-symlink", lambda out: [symlink("a", str(out)), file("a/.wh..wh..opq", b"")]),
    ("fifo-via-symlink", lambda out: [symlink("a", str(out)), special("a/evil", tarfile.FIFOTYPE)]),
    ("whiteout-dotdot", lambda out: [file(".wh...", b"")]),
    ("device", lambda out: [special("null", tarfile.CHRTYPE)]),
]


@needs_root
@pytest.mark.parametrize(("case", "entries"), BYPASS, ids=[case for case, _ in BYPASS])
def test_extraction_stays_inside_without_check(case: str, entries, out: Path) -> None:
    """``extract_members`` is the layer below ``check_layer``: fed a hostile tar directly, it
    must still fail before writing anything outside the root."""
    rootfs = out / "rootfs"
    rootfs.mkdir()
    before = snapshot(out)
    with (
        tarfile.open(fileobj=io.BytesIO(tar_bytes(entries(out)))) as tar,
        pytest.raises(ImageFormatError, match="member"),
    ):
        extract_members(tar, tar.getmembers(), str(rootfs), "bypass")
    assert snapshot(out) == before


def test_a_shifted_copy_belongs_to_the_user_namespace_root(tmp_path: Path) -> None:
    """unpack_layer(id_offset=N): every owner moves up by N, links are not followed."""
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tar:
        for name, kind in (("etc", tarfile.DIRTYPE), ("etc/passwd", tarfile.REGTYPE),
                           ("link", tarfile.SYMTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.uid = info.gid = 0 if name != "etc/passwd" else 7
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    unpack_layer(str(layer), str(tmp_path / "out"), id_offset=100000)
    assert os.stat(tmp_path / "out" / "etc").st_uid == 100000
    assert os.stat(tmp_path / "out" / "etc" / "passwd").st_gid == 100007
    assert os.lstat(tmp_path / "out" / "link").st_uid == 100000
