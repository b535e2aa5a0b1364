"""Fuzzing the image unpacker: generated layers whose members climb, link and white out in
every way hypothesis finds. ``unpack_layer`` either unpacks inside its destination or raises
ImageFormatError; nothing outside the destination is ever written (a sentinel tree beside it is
compared byte for byte), and a refused layer leaves no directory behind. Budget: ``fuzzing.py``.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path

from fuzzing import PROFILE
from hypothesis import given, settings
from hypothesis import strategies as st

from sdnctl.api.imagefmt import ImageFormatError, unpack_layer

parts = st.sampled_from(["a", "b", "..", ".", "", "etc", ".wh.a", ".wh..wh..opq", "x" * 300,
                         "sentinel", "c d", "\u00e9"])
names = st.lists(parts, min_size=1, max_size=4).map("/".join) | \
    st.lists(parts, min_size=1, max_size=3).map(lambda p: "/" + "/".join(p))
KINDS = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
         tarfile.BLKTYPE, tarfile.FIFOTYPE]
members = st.tuples(names, st.sampled_from(KINDS), names, st.binary(max_size=16))
layers = st.lists(members, min_size=1, max_size=6)


def build(spec: list[tuple[str, bytes, str, bytes]], path: str) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, link, data in spec:
            info = tarfile.TarInfo(name)
            info.type = kind  # type: ignore[assignment]
            info.mode = 0o755
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = link
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)


def tree(root: Path, skip: str = "") -> dict[str, bytes]:
    """Everything below ``root`` but ``skip``: file contents, link targets, directories."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if skip and (rel == skip or rel.startswith(skip + "/")):
                continue
            if os.path.islink(path):
                found[rel] = b"-> " + os.fsencode(os.readlink(path))
            elif os.path.isfile(path):
                found[rel] = Path(path).read_bytes()
            else:
                found[rel] = b"<dir>"
    return found


@settings(settings.get_profile(PROFILE), deadline=None,
          max_examples=max(300, settings.get_profile(PROFILE).max_examples))
@given(spec=layers)
def test_unpacking_never_writes_outside_its_destination(spec: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        sentinel = base / "sentinel"  # what `..` from the destination would reach
        (sentinel / "a").mkdir(parents=True)
        (sentinel / "a" / "b").write_text("untouched")
        (base / "etc").mkdir()
        (base / "etc" / "a").write_text("untouched")
        before = tree(base)
        blob = str(base / "layer.tar")
        build(spec, blob)
        before[blob.removeprefix(tmp + "/")] = Path(blob).read_bytes()
        dest = base / "store" / "layer"
        dest.parent.mkdir()
        before["store"] = b"<dir>"
        try:
            unpack_layer(blob, str(dest))
        except ImageFormatError:
            assert not dest.exists()
            assert not [n for n in os.listdir(dest.parent) if n.startswith("layer")]
        assert tree(base, skip="store/layer") == before
