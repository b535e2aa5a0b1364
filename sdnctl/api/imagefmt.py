"""Image archives (``docker save`` and OCI layouts), a blob store, and safe layer unpacking.

Design note. An image is a config blob plus layer blobs, all content-addressed. We keep every
layer *uncompressed* under its diff_id, so the digest we check at import (the config's
``rootfs.diff_ids``) is the digest we can check again at any later time, and ``docker save``
output needs no re-compression.

Archives are hostile input. Import never extracts an archive: it streams the members it needs
into temp files under ``<store>/tmp``, checks every digest and every layer member there, and only
then renames the blobs into place (stage, check, commit), removing what it added if the commit
fails. Unpacking a layer is checked again and, independently of the check, writes through file
descriptors only: each path component is opened with ``O_NOFOLLOW`` relative to its parent and
files are created with ``O_EXCL``, so even a tar that slipped past the check cannot write
outside the destination or overwrite a file the layer already wrote.

Layer rules (see ``check_layer``): relative names without ``..``; no member below a symlink or
a non-directory of the same layer; relative symlinks stay inside the layer, absolute ones are
kept as they are (they resolve inside the container root at run time); hardlinks only to an
earlier regular file of the layer; no device nodes; a name appears at most once, except
directories, which may be repeated (the last one's metadata wins). OCI whiteouts become
overlayfs whiteouts: ``.wh.NAME`` a 0/0 character device, ``.wh..wh..opq`` the
``trusted.overlay.opaque`` xattr. Setuid and setgid bits are stripped from files: containers
run as root, and a setuid binary in an unpacked layer is one a host user might reach.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import platform
import re
import secrets
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
NAME_MAX_BYTES = 4096
JSON_MAX_BYTES = 16 << 20  # manifests, indexes and configs are small; refuse to slurp more
CHUNK = 1 << 20

OPAQUE_XATTR = "trusted.overlay.opaque"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")
_MACHINE_TO_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}
_FIXED_MTIME = 0  # export: fixed times make two exports byte-identical


class ImageFormatError(ValueError):
    """An archive or layer is malformed or unsafe. The message names the archive and member."""


@dataclass(frozen=True)
class Image:
    id: str  # "sha256:<hex>" of the config JSON bytes, which are stored as a blob under this id
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]  # diff_ids, bottom layer first
    size: int  # sum of the uncompressed layer sizes


@dataclass(frozen=True)
class RunConfig:
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""


def host_architecture() -> str:
    """The GOARCH name of this machine, as image configs and platforms spell it."""
    machine = platform.machine()
    return _MACHINE_TO_GOARCH.get(machine, machine)


def runtime_config(config_bytes: bytes) -> RunConfig:
    """What to run, from an image config's ``config`` object; missing fields are empty."""
    try:
        doc = json.loads(config_bytes)
    except ValueError as e:
        raise ImageFormatError("image config is not JSON") from e
    if not isinstance(doc, dict):
        raise ImageFormatError("image config is not a JSON object")
    run = doc.get("config") or {}
    if not isinstance(run, dict):
        raise ImageFormatError("image config: 'config' is not an object")
    return RunConfig(
        env=_strings(run, "Env"),
        entrypoint=_strings(run, "Entrypoint"),
        cmd=_strings(run, "Cmd"),
        workdir=_string(run, "WorkingDir"),
        user=_string(run, "User"),
    )


def image_run_config(blobs: BlobStore, image: Image) -> RunConfig:
    """The run config of an imported image (its config blob is stored under ``image.id``)."""
    with blobs.open(image.id) as f:
        return runtime_config(f.read())


def _strings(obj: dict[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageFormatError(f"image config: {key!r} is not a list of strings")
    return tuple(value)


def _string(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key) or ""
    if not isinstance(value, str):
        raise ImageFormatError(f"image config: {key!r} is not a string")
    return value


# --- references -------------------------------------------------------------------------------

_HOST_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_HOST = rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE_RE = re.compile(
    rf"(?:(?P<host>{_HOST})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)
REFERENCE_MAX = 255


def parse_reference(ref: str) -> str:
    """Validate an image reference and return it with the default tag: ``busybox`` →
    ``busybox:latest``. Like Docker, a first component is a registry host only if it has a
    ``.`` or ``:`` or is ``localhost``; otherwise it is a (lowercase) path component."""
    match = _REFERENCE_RE.fullmatch(ref)
    if len(ref) > REFERENCE_MAX or match is None:
        raise ValueError(f"invalid image reference {ref!r}")
    host = match["host"]
    if host and not _is_host(host) and not re.fullmatch(_COMPONENT, host):
        raise ValueError(f"invalid image reference {ref!r}: {host!r} is not a registry host")
    if match["tag"] is None and match["digest"] is None:
        return f"{ref}:latest"
    return ref


def _is_host(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def _familiar(ref: str) -> str:
    """``docker.io/library/busybox:1`` → ``busybox:1``, as ``docker images`` shows it."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


# --- the blob store ---------------------------------------------------------------------------


class BlobStore:
    """Content-addressed files: ``root/sha256/<hex>``. Temp files live in ``root/tmp`` (same
    file system, so adding a blob is one atomic rename). One writer at a time: two concurrent
    imports of the same new blob could each believe they added it."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.tmp_dir = os.path.join(root, "tmp")
        self._blob_dir = os.path.join(root, "sha256")
        for directory in (root, self._blob_dir, self.tmp_dir):
            os.makedirs(directory, mode=0o700, exist_ok=True)

    def path(self, digest: str) -> str:
        if not DIGEST_RE.fullmatch(digest):
            raise ValueError(f"invalid digest {digest!r}")
        return os.path.join(self._blob_dir, digest.removeprefix("sha256:"))

    def has(self, digest: str) -> bool:
        return os.path.isfile(self.path(digest))

    def open(self, digest: str) -> IO[bytes]:
        return open(self.path(digest), "rb")

    def put(self, src_path: str, digest: str) -> bool:
        """Copy ``src_path`` in as ``digest``; True if it was not there before."""
        self.path(digest)
        with self.temp_file() as tmp:
            with open(src_path, "rb") as src, open(tmp, "wb") as dst:
                actual, _ = _copy_hashing(src, dst)
            if actual != digest:
                raise ImageFormatError(f"{src_path}: content is {actual}, not {digest}")
            return self.adopt(tmp, digest)

    def adopt(self, tmp_path: str, digest: str) -> bool:
        """Rename a verified temp file from ``tmp_dir`` into place; True if newly added."""
        if self.has(digest):
            return False
        os.rename(tmp_path, self.path(digest))
        return True

    def remove(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(digest))

    def digests(self) -> list[str]:
        names = os.listdir(self._blob_dir)
        return sorted(f"sha256:{n}" for n in names if DIGEST_RE.fullmatch(f"sha256:{n}"))

    @contextlib.contextmanager
    def temp_file(self) -> Iterator[str]:
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix="blob-")
        os.close(fd)
        try:
            yield tmp
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @contextlib.contextmanager
    def temp_dir(self) -> Iterator[str]:
        tmp = tempfile.mkdtemp(dir=self.tmp_dir, prefix="import-")
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def _copy_hashing(src: _Readable, dst: IO[bytes]) -> tuple[str, int]:
    """Copy ``src`` to ``dst``; return the sha256 digest and size of what was copied."""
    sha, size = hashlib.sha256(), 0
    while chunk := src.read(CHUNK):
        sha.update(chunk)
        dst.write(chunk)
        size += len(chunk)
    dst.flush()
    os.fsync(dst.fileno())
    return f"sha256:{sha.hexdigest()}", size


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


# --- member names -----------------------------------------------------------------------------


def _split_name(name: str, context: str, what: str = "member", within: str = "layer") -> list[str]:
    """A tar name as path components, rejecting absolute names and ``..``; ``""`` → ``[]``."""
    if "\0" in name:
        raise ImageFormatError(f"{context}: {what} {name!r} contains NUL")
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX_BYTES:
        raise ImageFormatError(f"{context}: {what} {name[:64]!r}… is longer than 4096 bytes")
    if name.startswith("/"):
        raise ImageFormatError(f"{context}: {what} {name!r} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageFormatError(f"{context}: {what} {name!r} climbs out of the {within}")
    return parts


def _resolve_symlink(parent: list[str], target: str) -> list[str] | None:
    """Where a relative symlink points, lexically; None if it climbs above the root."""
    parts = list(parent)
    for part in target.split("/"):
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return parts


# --- checking a layer -------------------------------------------------------------------------


def check_layer(tar: tarfile.TarFile | Iterable[tarfile.TarInfo], name: str) -> None:
    """Reject a layer with an unsafe or unsupported member; ``name`` prefixes the message
    (e.g. ``"image.tar: layer sha256:ab12…"``). Rules are in the module docstring."""
    members = tar.getmembers() if isinstance(tar, tarfile.TarFile) else tar
    kinds: dict[str, str] = {}  # path → "dir", "file", "symlink", "other"; parents are "dir"
    for member in members:
        _check_member(member, name, kinds)


def _check_member(member: tarfile.TarInfo, context: str, kinds: dict[str, str]) -> None:
    where = f"{context}: member {member.name!r}"
    parts = _split_name(member.name, context)
    if not parts:
        if not member.isdir():
            raise ImageFormatError(f"{where} names the layer root but is not a directory")
        return
    _check_parents(parts, where, kinds)
    kind = _member_kind(member, parts, where, kinds)
    key = "/".join(parts)
    if key in kinds and not (kind == "dir" == kinds[key]):
        raise ImageFormatError(f"{where} appears twice in the layer")
    kinds[key] = kind
    if parts[-1].startswith(WHITEOUT_PREFIX) and parts[-1] != OPAQUE_MARKER:
        hidden = "/".join([*parts[:-1], parts[-1][len(WHITEOUT_PREFIX) :]])
        if hidden in kinds:
            raise ImageFormatError(f"{where} whites out {hidden!r}, which the layer also has")
        kinds[hidden] = "other"


def _check_parents(parts: list[str], where: str, kinds: dict[str, str]) -> None:
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        kind = kinds.setdefault(parent, "dir")
        if kind == "symlink":
            raise ImageFormatError(f"{where} goes through symlink {parent!r}")
        if kind != "dir":
            raise ImageFormatError(f"{where} goes through non-directory {parent!r}")
        if parts[i - 1].startswith(WHITEOUT_PREFIX):
            raise ImageFormatError(f"{where} has a whiteout name as a directory")


def _member_kind(
    member: tarfile.TarInfo, parts: list[str], where: str, kinds: dict[str, str]
) -> str:
    base = parts[-1]
    if base.startswith(WHITEOUT_PREFIX):
        _check_whiteout(member, base, where)
        return "other"
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        _check_symlink(member, parts, where)
        return "symlink"
    if member.islnk():
        _check_hardlink(member, where, kinds)
        return "file"
    if member.isfifo():
        return "other"
    if member.ischr() or member.isblk():
        raise ImageFormatError(f"{where} is a device node")
    raise ImageFormatError(f"{where} has unsupported type {member.type!r}")


def _check_whiteout(member: tarfile.TarInfo, base: str, where: str) -> None:
    if not member.isreg():
        raise ImageFormatError(f"{where} is a whiteout but not a regular file")
    hidden = base[len(WHITEOUT_PREFIX) :]
    if base != OPAQUE_MARKER and (hidden in ("", ".", "..") or hidden.startswith(WHITEOUT_PREFIX)):
        raise ImageFormatError(f"{where} whites out {hidden!r}, which climbs out or is invalid")


def _check_symlink(member: tarfile.TarInfo, parts: list[str], where: str) -> None:
    target = member.linkname
    if not target or "\0" in target or len(target.encode("utf-8", "surrogateescape")) > 4096:
        raise ImageFormatError(f"{where} is a symlink with an invalid target")
    if not target.startswith("/") and _resolve_symlink(parts[:-1], target) is None:
        raise ImageFormatError(f"{where} is a symlink to {target!r}, which climbs out of the layer")


def _check_hardlink(member: tarfile.TarInfo, where: str, kinds: dict[str, str]) -> None:
    target = "/".join(_split_name(member.linkname, where, "hardlink target"))
    if kinds.get(target) != "file":
        raise ImageFormatError(
            f"{where} is a hardlink to {member.linkname!r}, "
            "which is not an earlier regular file of the layer"
        )


# --- import -----------------------------------------------------------------------------------


@dataclass
class _LayerRef:
    member: tarfile.TarInfo
    digest: str | None = None  # digest of the member's bytes, when the archive names one
    media_type: str = ""


@dataclass
class _ImagePlan:
    config: tarfile.TarInfo
    config_digest: str | None
    layers: list[_LayerRef]
    repo_tags: list[str] = field(default_factory=list)


def import_archive(path: str, blobs: BlobStore) -> list[Image]:
    """Import the images of a ``docker save`` archive or an OCI layout tar into ``blobs``.
    Everything is staged and checked under ``blobs.tmp_dir`` before anything is stored; on
    failure the store holds exactly what it held before."""
    try:
        with _Archive(path) as archive, blobs.temp_dir() as directory:
            staging = _Staging(archive, directory)
            images = [staging.image(plan) for plan in _read_plans(archive)]
            staging.commit(blobs)
    except (EOFError, zlib.error, gzip.BadGzipFile, tarfile.TarError) as e:
        # a truncated or corrupt compressed stream, found while reading members
        raise ImageFormatError(f"{path}: cannot read the archive: {e}") from e
    return _merge_tags(images)


def archive_references(path: str) -> list[str]:
    """The tags and IDs of an archive's images, from its manifest alone (no layer is read):
    what a container may name once the archive is loaded."""
    try:
        with _Archive(path) as archive:
            plans = _read_plans(archive)
    except (EOFError, zlib.error, gzip.BadGzipFile, tarfile.TarError) as e:
        raise ImageFormatError(f"{path}: cannot read the archive: {e}") from e
    return [*(tag for plan in plans for tag in plan.repo_tags),
            *(plan.config_digest for plan in plans if plan.config_digest)]


class _Archive:
    """An open image archive: members by normalized name, every one a plain file or directory
    with a safe name; reads that are bounded; errors that name the archive."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tar = self._open()
        try:
            self.members = self._index_members()
        except tarfile.TarError as e:
            self.tar.close()
            raise self.error(f"cannot read the archive: {e}") from e
        except BaseException:
            self.tar.close()
            raise

    def __enter__(self) -> _Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.tar.close()

    def _open(self) -> tarfile.TarFile:
        try:
            return tarfile.open(self.path)
        except (tarfile.TarError, OSError) as e:
            raise self.error(f"cannot read the archive: {e}") from e

    def error(self, message: str) -> ImageFormatError:
        return ImageFormatError(f"{self.path}: {message}")

    def _index_members(self) -> dict[str, tarfile.TarInfo]:
        members: dict[str, tarfile.TarInfo] = {}
        for member in self.tar.getmembers():
            key = "/".join(_split_name(member.name, self.path, within="archive"))
            if not (member.isreg() or member.isdir()):
                raise self.error(f"member {member.name!r} is not a file or directory")
            if key in members and not member.isdir():
                raise self.error(f"member {member.name!r} appears twice")
            members[key] = member
        return members

    def member(self, name: object) -> tarfile.TarInfo:
        """The regular file a manifest names."""
        if not isinstance(name, str):
            raise self.error(f"manifest names a member that is not a string: {name!r}")
        member = self.members.get("/".join(_split_name(name, self.path, within="archive")))
        if member is None or not member.isreg():
            raise self.error(f"member {name!r} is named by the manifest but missing")
        return member

    def blob(self, desc: dict[str, Any]) -> tarfile.TarInfo:
        return self.member("blobs/sha256/" + _hex(desc["digest"]))

    def read_small(self, member: tarfile.TarInfo) -> bytes:
        if member.size > JSON_MAX_BYTES:
            raise self.error(f"member {member.name!r} is too big for JSON")
        return self.open(member).read()

    def open(self, member: tarfile.TarInfo) -> IO[bytes]:
        src = self.tar.extractfile(member)
        assert src is not None  # regular files always have content
        return src

    def read_json(self, member: tarfile.TarInfo, digest: str | None = None) -> Any:
        data = self.read_small(member)
        if digest is not None and _sha256(data) != digest:
            raise self.error(f"member {member.name!r} does not match its digest {digest}")
        try:
            return json.loads(data)
        except ValueError as e:
            raise self.error(f"member {member.name!r} is not JSON") from e


def _read_plans(archive: _Archive) -> list[_ImagePlan]:
    if "manifest.json" in archive.members:
        plans = _docker_save_plans(archive)
    elif "index.json" in archive.members and "oci-layout" in archive.members:
        plans = _oci_layout_plans(archive)
    else:
        raise archive.error("neither manifest.json nor an OCI layout: not an image archive")
    if not plans:
        raise archive.error("the archive holds no images")
    return plans


_BLOB_PATH_RE = re.compile(r"(?:.*/)?blobs/sha256/([0-9a-f]{64})")
_LEGACY_CONFIG_RE = re.compile(r"(?:.*/)?([0-9a-f]{64})\.json")


def _digest_from_name(name: str) -> str | None:
    """``docker save`` names blobs by digest (``blobs/sha256/<hex>``, ``<hex>.json``)."""
    match = _BLOB_PATH_RE.fullmatch(name) or _LEGACY_CONFIG_RE.fullmatch(name)
    return f"sha256:{match[1]}" if match else None


def _docker_save_plans(archive: _Archive) -> list[_ImagePlan]:
    manifest = archive.read_json(archive.members["manifest.json"])
    if not isinstance(manifest, list):
        raise archive.error("member 'manifest.json' is not a list")
    plans = []
    for entry in manifest:
        if not isinstance(entry, dict) or not isinstance(entry.get("Layers"), list):
            raise archive.error("member 'manifest.json' has a malformed entry")
        config = archive.member(entry.get("Config"))
        layers = [archive.member(name) for name in entry["Layers"]]
        plans.append(
            _ImagePlan(
                config=config,
                config_digest=_digest_from_name(config.name),
                layers=[_LayerRef(m, _digest_from_name(m.name)) for m in layers],
                repo_tags=_repo_tags(archive, entry.get("RepoTags") or []),
            )
        )
    return plans


def _repo_tags(archive: _Archive, tags: object) -> list[str]:
    if not isinstance(tags, list):
        raise archive.error("RepoTags is not a list")
    try:
        return [_familiar(parse_reference(tag)) for tag in tags]
    except (ValueError, TypeError) as e:
        raise archive.error(f"bad repo tag: {e}") from e


def _oci_layout_plans(archive: _Archive) -> list[_ImagePlan]:
    index = archive.read_json(archive.members["index.json"])
    plans = []
    for desc in _descriptors(archive, index, "index.json"):
        manifest = _resolve_manifest(archive, desc)
        config = _descriptor(archive, manifest.get("config"))
        layers = _descriptors(archive, manifest, "manifest", key="layers")
        plans.append(
            _ImagePlan(
                config=archive.blob(config),
                config_digest=config["digest"],
                layers=[
                    _LayerRef(archive.blob(d), d["digest"], d.get("mediaType", "")) for d in layers
                ],
                repo_tags=_oci_tags(archive, desc),
            )
        )
    return plans


def _descriptor(archive: _Archive, desc: object) -> dict[str, Any]:
    if not isinstance(desc, dict) or not DIGEST_RE.fullmatch(str(desc.get("digest"))):
        raise archive.error(f"malformed descriptor {desc!r}")
    return desc


def _descriptors(
    archive: _Archive, doc: object, what: str, key: str = "manifests"
) -> list[dict[str, Any]]:
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise archive.error(f"{what} has no {key!r} list")
    return [_descriptor(archive, d) for d in doc[key]]


def _resolve_manifest(archive: _Archive, desc: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """Follow indexes down to one image manifest: this machine's platform, or the only one."""
    member = archive.blob(desc)
    doc = archive.read_json(member, desc["digest"])
    if not isinstance(doc, dict):
        raise archive.error(f"member {member.name!r} is not a JSON object")
    if desc.get("mediaType") not in _INDEX_TYPES and "manifests" not in doc:
        return doc
    if depth > 4:
        raise archive.error(f"indexes nest too deep at {member.name!r}")
    manifests = _descriptors(archive, doc, member.name)
    chosen = manifests if len(manifests) == 1 else [d for d in manifests if _is_host_platform(d)]
    if not chosen:
        raise archive.error(f"index {member.name!r} has no linux/{host_architecture()} image")
    return _resolve_manifest(archive, chosen[0], depth + 1)


def _is_host_platform(desc: dict[str, Any]) -> bool:
    plat = desc.get("platform") or {}
    return plat.get("os") == "linux" and plat.get("architecture") == host_architecture()


def _oci_tags(archive: _Archive, desc: dict[str, Any]) -> list[str]:
    """The image name from the index annotations; a bare ``ref.name`` such as ``latest`` names
    no repository, so it gives no tag."""
    annotations = desc.get("annotations") or {}
    for key in _NAME_ANNOTATIONS:
        name = annotations.get(key)
        if isinstance(name, str) and any(c in name for c in ":/@"):
            return _repo_tags(archive, [name])
    return []


class _Staging:
    """Blobs copied out of an archive into a temp directory of the store, checked, waiting to
    be committed: ``blobs`` maps digest → temp path."""

    def __init__(self, archive: _Archive, directory: str) -> None:
        self.archive, self.directory = archive, directory
        self.blobs: dict[str, str] = {}

    def image(self, plan: _ImagePlan) -> Image:
        config_bytes = self.archive.read_small(plan.config)
        image_id = _sha256(config_bytes)
        where = f"member {plan.config.name!r}"
        if plan.config_digest not in (None, image_id):
            raise self.archive.error(f"{where} is {image_id}, not {plan.config_digest}")
        diff_ids = self._diff_ids(config_bytes, where)
        if len(diff_ids) != len(plan.layers):
            raise self.archive.error(
                f"{where} lists {len(diff_ids)} layers, the manifest {len(plan.layers)}"
            )
        pairs = zip(plan.layers, diff_ids, strict=True)
        size = sum(self.layer(ref, diff_id) for ref, diff_id in pairs)
        self.blobs[image_id] = self._new_file(config_bytes)
        return Image(image_id, tuple(plan.repo_tags), tuple(diff_ids), size)

    def _diff_ids(self, config_bytes: bytes, where: str) -> list[str]:
        try:
            diff_ids = json.loads(config_bytes)["rootfs"]["diff_ids"]
        except (ValueError, KeyError, TypeError) as e:
            raise self.archive.error(f"{where} has no rootfs.diff_ids") from e
        if not isinstance(diff_ids, list) or not all(DIGEST_RE.fullmatch(str(d)) for d in diff_ids):
            raise self.archive.error(f"{where} has malformed rootfs.diff_ids")
        return diff_ids

    def layer(self, ref: _LayerRef, diff_id: str) -> int:
        """Copy one layer out, uncompressed; check its digests and members; return its size."""
        if diff_id not in self.blobs:
            where = f"{self.archive.path}: layer {diff_id[:19]}… from {ref.member.name!r}"
            raw = self._new_file(b"")
            with open(raw, "wb") as dst:
                raw_digest, _ = _copy_hashing(self.archive.open(ref.member), dst)
            if ref.digest not in (None, raw_digest):
                raise ImageFormatError(f"{where}: content is {raw_digest}, not {ref.digest}")
            tar_path, actual = _decompress(raw, raw_digest, ref.media_type, where)
            if actual != diff_id:
                raise ImageFormatError(
                    f"{where}: uncompressed content is {actual}, not diff_id {diff_id}"
                )
            _check_layer_file(tar_path, where)
            self.blobs[diff_id] = tar_path
        return os.path.getsize(self.blobs[diff_id])

    def _new_file(self, data: bytes) -> str:
        fd, tmp = tempfile.mkstemp(dir=self.directory)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return tmp

    def commit(self, store: BlobStore) -> None:
        """Move every staged blob into ``store``; if one fails, remove those this call added."""
        added: list[str] = []
        try:
            for digest, tmp in self.blobs.items():
                if store.adopt(tmp, digest):
                    added.append(digest)
        except BaseException:
            for digest in added:
                store.remove(digest)
            raise


def _check_layer_file(tar_path: str, where: str) -> None:
    try:
        with tarfile.open(tar_path, "r:") as layer:
            check_layer(layer, where)
    except tarfile.TarError as e:
        raise ImageFormatError(f"{where}: not a tar: {e}") from e


def _decompress(raw: str, raw_digest: str, media_type: str, where: str) -> tuple[str, str]:
    """Return the path and digest of the uncompressed layer (``raw`` itself if not gzip)."""
    with open(raw, "rb") as f:
        magic = f.read(4)
    if magic.startswith(_ZSTD_MAGIC) or media_type.endswith("+zstd"):
        raise ImageFormatError(f"{where}: zstd layers are not supported")
    if not magic.startswith(_GZIP_MAGIC):
        if media_type.endswith("+gzip"):
            raise ImageFormatError(f"{where}: media type {media_type!r} but not gzip data")
        return raw, raw_digest
    plain = raw + ".tar"
    try:
        with gzip.open(raw, "rb") as src, open(plain, "wb") as dst:
            digest, _ = _copy_hashing(src, dst)
    except (OSError, EOFError) as e:
        raise ImageFormatError(f"{where}: bad gzip data: {e}") from e
    finally:
        os.unlink(raw)
    return plain, digest


def _merge_tags(images: list[Image]) -> list[Image]:
    """One Image per id, with the tags of every manifest entry that named it, in order."""
    merged: dict[str, Image] = {}
    for image in images:
        seen = merged.get(image.id)
        tags = (seen.repo_tags if seen else ()) + image.repo_tags
        merged[image.id] = Image(image.id, tuple(dict.fromkeys(tags)), image.layers, image.size)
    return list(merged.values())


# --- export -----------------------------------------------------------------------------------


def export_archive(path: str, images: list[Image], blobs: BlobStore) -> None:
    """Write a ``docker save`` archive of ``images``, deterministically (sorted members, fixed
    times and owners), atomically (temp file, then rename)."""
    files: dict[str, str] = {}  # member name → blob path
    manifest: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    for image in images:
        for digest in (image.id, *image.layers):
            if not blobs.has(digest):
                raise ImageFormatError(
                    f"{path}: image {image.id[:19]}: blob {digest} is not in the store"
                )
        files[f"{_hex(image.id)}.json"] = blobs.path(image.id)
        files.update({f"{_hex(d)}/layer.tar": blobs.path(d) for d in image.layers})
        manifest.append(
            {
                "Config": f"{_hex(image.id)}.json",
                "RepoTags": list(image.repo_tags),
                "Layers": [f"{_hex(d)}/layer.tar" for d in image.layers],
            }
        )
        top = _hex(image.layers[-1]) if image.layers else ""
        for name, tag in _name_tag_pairs(image.repo_tags):
            repositories.setdefault(name, {})[tag] = top
    documents = {"manifest.json": _json_bytes(manifest), "repositories": _json_bytes(repositories)}
    directories = {name.split("/")[0] + "/" for name in files if "/" in name}
    with _atomic_output(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as out:
        for name in sorted({*files, *documents, *directories}):
            _add_member(out, name, files.get(name), documents.get(name))


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def _name_tag_pairs(repo_tags: Iterable[str]) -> Iterator[tuple[str, str]]:
    for ref in repo_tags:
        name, _, tag = ref.rpartition(":")
        if name and "/" not in tag and "@" not in ref:
            yield name, tag


def _json_bytes(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _add_member(out: tarfile.TarFile, name: str, blob: str | None, data: bytes | None) -> None:
    info = tarfile.TarInfo(name.rstrip("/"))
    info.mtime = _FIXED_MTIME
    if name.endswith("/"):
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        out.addfile(info)
    elif blob is not None:
        info.mode, info.size = 0o644, os.path.getsize(blob)
        with open(blob, "rb") as src:
            out.addfile(info, src)
    else:
        assert data is not None
        info.mode, info.size = 0o644, len(data)
        out.addfile(info, io.BytesIO(data))


@contextlib.contextmanager
def _atomic_output(path: str) -> Iterator[str]:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --- unpacking a layer ------------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def unpack_layer(blob_path: str, dest: str, id_offset: int = 0) -> None:
    """Unpack an uncompressed layer tar into ``dest``, which must not exist, converting OCI
    whiteouts to overlayfs ones. The layer is checked first; the tree is built next to ``dest``
    and renamed into place, or removed if anything fails. ``id_offset`` shifts every owner
    (uid and gid) by that much: the copy a user namespace mapping root to ``id_offset`` sees as
    the image's own ownership (what Docker's userns-remap does)."""
    if os.path.lexists(dest):
        raise FileExistsError(f"cannot unpack {blob_path}: {dest} exists")
    tmp = f"{dest}.tmp-{secrets.token_hex(6)}"
    os.mkdir(tmp, 0o755)
    try:
        try:
            with tarfile.open(blob_path, "r:") as tar:
                members = tar.getmembers()
                check_layer(members, blob_path)
                extract_members(tar, members, tmp, blob_path)
        except tarfile.TarError as e:
            raise ImageFormatError(f"{blob_path}: not a tar: {e}") from e
        if id_offset:
            shift_owners(tmp, id_offset)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def shift_owners(root: str, offset: int) -> None:
    """Add ``offset`` to the uid and gid of ``root`` and everything below it (links are not
    followed: lchown, and os.walk does not descend into symlinked directories)."""
    def shift(path: str) -> None:
        st = os.lstat(path)
        os.lchown(path, st.st_uid + offset, st.st_gid + offset)

    shift(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            shift(os.path.join(dirpath, name))


def extract_members(
    tar: tarfile.TarFile, members: Iterable[tarfile.TarInfo], root: str, context: str
) -> None:
    """Write ``members`` under the existing directory ``root`` without following any symlink
    and without replacing anything already written. This does not call ``check_layer`` (that is
    the caller's job) yet stays inside ``root`` whatever the tar holds; unsafe members fail."""
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        directories: list[tuple[list[str], tarfile.TarInfo]] = []
        for member in members:
            parts = _split_name(member.name, context)
            if not parts:
                continue  # the layer root: dest keeps its own metadata
            try:
                _extract_one(tar, member, parts, root_fd)
            except (OSError, ImageFormatError) as e:
                raise ImageFormatError(
                    f"{context}: member {member.name!r}: cannot unpack: {e}"
                ) from e
            if member.isdir():
                directories.append((parts, member))
        # Directory times last, deepest first: creating children would change them.
        for parts, member in sorted(directories, key=lambda d: -len(d[0])):
            with _opened(_walk(root_fd, parts, create=False)) as fd:
                _set_metadata(fd, member, os.stat(fd).st_mode)
    finally:
        os.close(root_fd)


@contextlib.contextmanager
def _opened(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _walk(root_fd: int, parts: list[str], create: bool) -> int:
    """Open the directory ``parts`` below ``root_fd``, never following a symlink; with
    ``create``, make missing components (0o755)."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _extract_one(
    tar: tarfile.TarFile, member: tarfile.TarInfo, parts: list[str], root_fd: int
) -> None:
    with _opened(_walk(root_fd, parts[:-1], create=True)) as parent:
        base = parts[-1]
        if base == OPAQUE_MARKER:
            os.setxattr(parent, OPAQUE_XATTR, b"y")
        elif base.startswith(WHITEOUT_PREFIX):
            whiteout = base[len(WHITEOUT_PREFIX) :]
            if whiteout in ("", ".", ".."):
                raise OSError(f"invalid whiteout {base!r}")
            os.mknod(whiteout, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
        elif member.isdir():
            _make_directory(base, parent)
        elif member.isreg():
            _write_file(tar, member, base, parent)
        elif member.issym():
            os.symlink(member.linkname, base, dir_fd=parent)
            _chown(base, member, parent)
            os.utime(base, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)
        elif member.islnk():
            _make_hardlink(member.linkname, base, parent, root_fd)
        elif member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=parent)
            fd = os.open(
                base, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent
            )
            with _opened(fd):
                _set_metadata(fd, member, stat.S_IFIFO)
        else:
            raise OSError(f"unsupported member type {member.type!r}")


def _make_directory(name: str, parent: int) -> None:
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        # A repeated directory, or one made earlier as a parent; anything else is a conflict.
        if not stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            raise


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, parent: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o600, dir_fd=parent)
    with open(fd, "wb") as dst:
        src = tar.extractfile(member)
        assert src is not None
        shutil.copyfileobj(src, dst, CHUNK)
        dst.flush()
        _set_metadata(dst.fileno(), member, stat.S_IFREG)


def _make_hardlink(target: str, name: str, parent: int, root_fd: int) -> None:
    parts = _split_name(target, "hardlink", "target")  # raises for absolute and ".."
    if not parts:
        raise OSError(f"hardlink to the layer root {target!r}")
    with _opened(_walk(root_fd, parts[:-1], create=False)) as source_dir:
        if not stat.S_ISREG(os.stat(parts[-1], dir_fd=source_dir, follow_symlinks=False).st_mode):
            raise OSError(f"hardlink target {target!r} is not a regular file")
        os.link(parts[-1], name, src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)


def _set_metadata(fd: int, member: tarfile.TarInfo, file_type: int) -> None:
    """Owner, then mode (chown clears setuid anyway), then times. Files lose setuid/setgid;
    directories keep setgid and sticky (``/tmp`` is 1777)."""
    if os.geteuid() == 0:
        os.fchown(fd, member.uid, member.gid)
    mode = stat.S_IMODE(member.mode)
    if not stat.S_ISDIR(file_type):
        mode &= ~(stat.S_ISUID | stat.S_ISGID)
    os.fchmod(fd, mode)
    os.utime(fd, (member.mtime, member.mtime))


def _chown(name: str, member: tarfile.TarInfo, parent: int) -> None:
    if os.geteuid() == 0:
        os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
