"""Helpers for the image tests: build layer tars and archives member by member, hostile ones
included, and snapshot what must not change."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sdnctl.api.imagefmt import BlobStore

Entry = tuple[tarfile.TarInfo, bytes | None]


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, 1_600_000_000
    return info


def file(name: str, data: bytes = b"x", mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    info = _info(name, tarfile.REGTYPE, mode)
    info.size, info.uid, info.gid = len(data), uid, gid
    return info, data


def directory(name: str, mode: int = 0o755, mtime: int = 1_600_000_000) -> Entry:
    info = _info(name, tarfile.DIRTYPE, mode)
    info.mtime = mtime
    return info, None


def symlink(name: str, target: str) -> Entry:
    info = _info(name, tarfile.SYMTYPE, 0o777)
    info.linkname = target
    return info, None


def hardlink(name: str, target: str) -> Entry:
    info = _info(name, tarfile.LNKTYPE, 0o644)
    info.linkname = target
    return info, None


def special(name: str, kind: bytes, mode: int = 0o600) -> Entry:
    info = _info(name, kind, mode)
    info.devmajor, info.devminor = 1, 3
    return info, None


def tar_bytes(entries: Sequence[Entry]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def config_bytes(diff_ids: Sequence[str]) -> bytes:
    doc = {
        "os": "linux",
        "architecture": "amd64",
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }
    return json.dumps(doc).encode()


def save_archive(
    path: Path,
    layers: Sequence[bytes],
    tags: Sequence[str] = ("hostile:latest",),
    diff_ids: Sequence[str] | None = None,
    manifest: object = None,
    extra: Sequence[Entry] = (),
) -> Path:
    """A ``docker save`` archive of one image; ``diff_ids`` and ``manifest`` override the true
    ones, ``extra`` adds outer members."""
    config = config_bytes(diff_ids if diff_ids is not None else [sha256(layer) for layer in layers])
    config_name = f"{sha256(config)[7:]}.json"
    layer_names = [f"layer{i}/layer.tar" for i in range(len(layers))]
    if manifest is None:
        manifest = [{"Config": config_name, "RepoTags": list(tags), "Layers": layer_names}]
    entries = [file(config_name, config), file("manifest.json", json.dumps(manifest).encode())]
    entries += [file(name, data) for name, data in zip(layer_names, layers, strict=True)]
    path.write_bytes(tar_bytes([*entries, *extra]))
    return path


def oci_layout(
    path: Path, config: bytes, layers: Sequence[bytes], ref: str, nested: bool = False
) -> Path:
    """An OCI layout tar: gzip'd layers, a manifest, and ``index.json`` naming ``ref``. With
    ``nested``, the manifest sits in a second index beside a decoy for another platform whose
    blobs are missing, so choosing the decoy fails."""
    blobs: dict[str, bytes] = {}

    def add(data: bytes) -> dict[str, object]:
        blobs[sha256(data)] = data
        return {"digest": sha256(data), "size": len(data)}

    gz = [gzip.compress(layer, compresslevel=1, mtime=0) for layer in layers]
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **add(config)},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **add(g)} for g in gz
        ],
    }
    top = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **add(json.dumps(manifest).encode()),
    }
    if nested:
        decoy = {"mediaType": manifest["mediaType"], "digest": "sha256:" + "0" * 64, "size": 1}
        index = {
            "schemaVersion": 2,
            "manifests": [
                {**decoy, "platform": {"os": "linux", "architecture": "s390x"}},
                {**top, "platform": {"os": "linux", "architecture": "amd64"}},
            ],
        }
        top = {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            **add(json.dumps(index).encode()),
        }
    top["annotations"] = {
        "io.containerd.image.name": ref,
        "org.opencontainers.image.ref.name": "latest",
    }
    entries = [
        file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
        file("index.json", json.dumps({"schemaVersion": 2, "manifests": [top]}).encode()),
        directory("blobs"),
        directory("blobs/sha256"),
    ]
    entries += [file(f"blobs/sha256/{d[7:]}", data) for d, data in sorted(blobs.items())]
    path.write_bytes(tar_bytes(entries))
    return path


@dataclass(frozen=True)
class Snapshot:
    """What a failed import or unpack must leave as it was."""

    digests: list[str]
    tmp: list[str]
    sentinel: tuple[bytes, int]
    siblings: list[str]

    @classmethod
    def take(cls, blobs: BlobStore, sentinel: Path) -> Snapshot:
        return cls(
            digests=blobs.digests(),
            tmp=sorted(os.listdir(blobs.tmp_dir)),
            sentinel=(sentinel.read_bytes(), sentinel.stat().st_mtime_ns),
            siblings=sorted(os.listdir(sentinel.parent)),
        )


@dataclass(frozen=True)
class Hostile:
    """A layer that must be rejected; ``entries(out)`` may aim at the directory ``out`` that
    holds the sentinel, and ``member`` (with ``{out}`` filled in) is what the message must name."""

    id: str
    entries: Callable[[Path], list[Entry]]
    member: str

    def message(self, out: Path) -> str:
        return self.member.replace("{out}", str(out))


HOSTILE_LAYERS = [
    Hostile("dotdot", lambda out: [file("../sentinel", b"pwned")], "'../sentinel'"),
    Hostile("dotdot-inside", lambda out: [directory("a"), file("a/../../evil")], "'a/../../evil'"),
    Hostile("absolute", lambda out: [file(str(out / "evil"), b"pwned")], "'{out}/evil'"),
    Hostile("symlink-climbs", lambda out: [symlink("a", "../../.."), file("a/evil")], "'a'"),
    Hostile(
        "through-symlink",
        lambda out: [symlink("a", str(out)), file("a/evil", b"pwned")],
        "'a/evil'",
    ),
    Hostile(
        "through-symlink-dir",
        lambda out: [directory("d"), symlink("d/a", str(out)), directory("d/a/sub")],
        "'d/a/sub'",
    ),
    Hostile(
        "replace-symlink",
        lambda out: [symlink("s", str(out / "sentinel")), file("s", b"pwned")],
        "'s'",
    ),
    Hostile("hardlink-absolute", lambda out: [hardlink("evil", "/etc/passwd")], "'evil'"),
    Hostile("hardlink-climbs", lambda out: [hardlink("evil", "../sentinel")], "'evil'"),
    Hostile("hardlink-forward", lambda out: [hardlink("evil", "later"), file("later")], "'evil'"),
    Hostile(
        "hardlink-to-symlink",
        lambda out: [symlink("s", str(out / "sentinel")), hardlink("evil", "s")],
        "'evil'",
    ),
    Hostile("char-device", lambda out: [special("null", tarfile.CHRTYPE)], "'null'"),
    Hostile("block-device", lambda out: [special("sda", tarfile.BLKTYPE)], "'sda'"),
    Hostile("whiteout-climbs", lambda out: [file("../.wh.sentinel", b"")], "'../.wh.sentinel'"),
    Hostile("whiteout-dotdot", lambda out: [file(".wh...", b"")], "'.wh...'"),
    Hostile("whiteout-not-file", lambda out: [directory(".wh.x")], "'.wh.x'"),
    Hostile("whiteout-as-dir", lambda out: [file(".wh.x/y", b"")], "'.wh.x/y'"),
    Hostile("duplicate-file", lambda out: [file("f", b"1"), file("f", b"2")], "'f'"),
    Hostile("through-file", lambda out: [file("f", b"1"), file("f/g", b"2")], "'f/g'"),
    Hostile("long-name", lambda out: [file("a" * 4097)], "longer than 4096 bytes"),
]
