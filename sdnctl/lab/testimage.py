"""A small, deterministic test image built from the host's static busybox.

Two layers, so that tests see whiteouts and opaque directories work: layer 1 is a minimal root
file system (busybox and its applet symlinks, /etc, /tmp, mount points, a file and a directory
for layer 2 to hide); layer 2 whites out ``/etc/sdnctl-test-removed``, makes ``/opt/opaque``
opaque with a new file in it, and adds ``/layer2-marker``. Fixed times and owners make the image
ID depend only on the busybox binary and the tag.

    python -m sdnctl.lab.testimage -o busybox.tar [--tag sdnctl-test:latest]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Sequence

from sdnctl.api.imagefmt import BlobStore, Image, export_archive, host_architecture, parse_reference

DEFAULT_TAG = "sdnctl-test:latest"
MTIME = 1_577_836_800  # 2020-01-01T00:00:00Z
CREATED = "2020-01-01T00:00:00Z"
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APPLETS = (
    *("sh", "ls", "cat", "echo", "ps", "hostname", "sleep", "id", "head", "tr", "touch"),
    *("mkdir", "rm", "wc", "grep", "env", "nc", "wget", "ping", "ip", "ifconfig", "true",
      "nslookup"),
    *("false", "test", "kill", "mount", "stat", "readlink", "top", "dd", "tail", "sed"),
)

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def build_test_image(path: str, tag: str = DEFAULT_TAG, busybox: str = "/bin/busybox",
                     extra_bytes: int = 0) -> str:
    """Write a ``docker save`` archive of the test image to ``path``; return its image ID.
    ``extra_bytes``: a third layer holding ``/data/random``, that many random (incompressible)
    bytes, for a big image (benchmarks)."""
    tag = parse_reference(tag)
    with open(busybox, "rb") as f:
        busybox_bytes = f.read()
    layers = [_layer_tar(_base_layer(busybox_bytes, tag)), _layer_tar(_upper_layer())]
    if extra_bytes:
        layers.append(_layer_tar([_dir("data"), _file("data/random", os.urandom(extra_bytes))]))
    with tempfile.TemporaryDirectory(prefix="sdnctl-testimage-") as tmp:
        blobs = BlobStore(tmp)
        diff_ids = [_put_bytes(blobs, data) for data in layers]
        config = _config_bytes(diff_ids)
        image = Image(_put_bytes(blobs, config), (tag,), tuple(diff_ids), sum(map(len, layers)))
        export_archive(path, [image], blobs)
    return image.id


def _base_layer(busybox: bytes, tag: str) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    entries = [_dir("bin"), _file("bin/busybox", busybox, 0o755)]
    entries += [_symlink(f"bin/{applet}", "busybox") for applet in APPLETS]
    entries += [
        _dir("dev"),
        _dir("etc"),
        _file("etc/group", GROUP.encode()),
        _file("etc/hosts", HOSTS.encode()),
        _file("etc/passwd", PASSWD.encode()),
        _file("etc/sdnctl-image", f"{tag}\n".encode()),
        _file("etc/sdnctl-test-removed", b"layer 2 whites this out\n"),
        _dir("opt"),
        _dir("opt/opaque"),
        _file("opt/opaque/old-file", b"layer 2 hides this\n"),
        _dir("proc"),
        _dir("root", 0o700),
        _dir("sys"),
        _dir("tmp", 0o1777),
    ]
    return entries


def _upper_layer() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [
        _dir("etc"),
        _file("etc/.wh.sdnctl-test-removed", b""),
        _file("layer2-marker", b"layer 2\n"),
        _dir("opt"),
        _dir("opt/opaque"),
        _file("opt/opaque/.wh..wh..opq", b""),
        _file("opt/opaque/new-file", b"from layer 2\n"),
    ]


def _config_bytes(diff_ids: list[str]) -> bytes:
    config = {
        "architecture": host_architecture(),
        "os": "linux",
        "created": CREATED,
        "config": {"Env": [PATH], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": CREATED, "created_by": "sdnctl.testimage: busybox root file system"},
            {"created": CREATED, "created_by": "sdnctl.testimage: whiteout and opaque directory"},
        ],
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def _info(name: str, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uname, info.gname = mode, MTIME, "root", "root"
    return info


def _dir(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes | None]:
    info = _info(name, mode)
    info.type = tarfile.DIRTYPE
    return info, None


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    info = _info(name, mode)
    info.size = len(data)
    return info, data


def _symlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = _info(name, 0o777)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


def _layer_tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _put_bytes(blobs: BlobStore, data: bytes) -> str:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    with blobs.temp_file() as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
        blobs.adopt(tmp, digest)
    return digest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sdnctl.lab.testimage", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "-o", "--output", required=True, help="where to write the docker save archive"
    )
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"image tag (default {DEFAULT_TAG})")
    parser.add_argument("--busybox", default="/bin/busybox", help="a static busybox binary")
    args = parser.parse_args(argv)
    print(build_test_image(os.path.abspath(args.output), args.tag, args.busybox))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
