"""Fuzzing the index loader (hypothesis): edited, truncated or extended files, with and without their
checksums recomputed, either load as a usable index or are refused with one IndexFileError; nothing else."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnhash.errors import IndexFileError
from attnhash.index import create_index, open_index
from attnhash.index.fileformat import _HEAD, _SECTIONS, HEADER_SIZE

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_FIELDS = ["magic", "version", "hsize", "bits", "code_size", "count", "next_id", "fplen", "fp"]


@pytest.fixture(scope="module")
def good_file(tmp_path_factory) -> bytes:
    path = str(tmp_path_factory.mktemp("fuzz") / "good.idx")
    rng = np.random.default_rng(0)
    index = create_index("faiss", 64, fingerprint="ab" * 32, info={"class_names": ["a", "b"], "run_dir": "r"})
    index.add(rng.integers(0, 256, (40, 8), dtype=np.uint8), ids=rng.permutation(100)[:40],
              metadata=[{"path": f"/x/{j}.png", "labels": [j % 2]} if j % 3 else None for j in range(40)])
    index.save(path)
    with open(path, "rb") as f:
        return f.read()


def fix_checksums(data: bytes) -> bytes:
    """Recompute every section checksum that the (possibly edited) section table allows, then the header's."""
    if len(data) < HEADER_SIZE:
        return data
    vals = list(_HEAD.unpack(data[: _HEAD.size]))
    for i in range(len(_SECTIONS)):
        off, length = vals[9 + 3 * i], vals[10 + 3 * i]
        if off + length <= len(data):
            vals[11 + 3 * i] = zlib.crc32(data[off : off + length])
    head = _HEAD.pack(*vals).ljust(HEADER_SIZE - 4, b"\0")
    return head + struct.pack("<I", zlib.crc32(head)) + data[HEADER_SIZE:]


def exercise(path: str, verify: bool) -> None:
    """Open and use the index the way attnhash does; only IndexFileError may come out."""
    try:
        index = open_index(path, verify=verify)
        ids = index.all_ids()
        assert len(ids) == len(index)
        index.metadata(ids)
        q = np.zeros((2, index.code_size), np.uint8)
        d, i = index.search(q, 5)
        assert d.shape == (2, 5)
        index.range_search(q, 3)
        index.reconstruct(ids[:3])
        with index.transaction():
            if index.next_id + 2 <= 2**63 - 1:  # else add says "no ids left" (tested elsewhere)
                index.add(np.ones((2, index.code_size), np.uint8), metadata=[{"path": "new"}, None])
            index.remove(ids[:2])
            index.save(path + ".out")
        back = open_index(path + ".out")
        assert len(back) == len(index)
    except IndexFileError as err:
        assert "\n" not in str(err) and path in str(err) or "index" in str(err)


@SETTINGS
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
       fix=st.booleans(), verify=st.booleans())
def test_edited_bytes(tmp_path, good_file, edits, fix, verify):
    data = bytearray(good_file)
    for pos, value in edits:
        data[pos % len(data)] = value
    data = fix_checksums(bytes(data)) if fix else bytes(data)
    path = str(tmp_path / "f.idx")
    with open(path, "wb") as f:
        f.write(data)
    exercise(path, verify)


@SETTINGS
@given(cut=st.integers(0, 3000), extra=st.binary(max_size=200), fix=st.booleans())
def test_truncated_or_extended(tmp_path, good_file, cut, extra, fix):
    data = good_file[: len(good_file) - cut] + extra
    data = fix_checksums(data) if fix else data
    path = str(tmp_path / "f.idx")
    with open(path, "wb") as f:
        f.write(data)
    exercise(path, verify=True)


_INTS = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 5000))


@SETTINGS
@given(changes=st.dictionaries(st.sampled_from(["bits", "code_size", "count", "fplen", "version", "hsize"]),
                               st.integers(0, 2**31), min_size=0, max_size=4),
       next_id=st.one_of(st.none(), _INTS), fp=st.one_of(st.none(), st.binary(max_size=128)),
       sections=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1), st.integers(0, 10_000)), max_size=3))
def test_header_fields_with_fixed_checksums(tmp_path, good_file, changes, next_id, fp, sections):
    vals = list(_HEAD.unpack(good_file[: _HEAD.size]))
    unsigned = {"bits": 2**32, "code_size": 2**32, "count": 2**64, "fplen": 2**32, "version": 2**32, "hsize": 2**32}
    for key, value in changes.items():
        vals[_FIELDS.index(key)] = value % unsigned[key]
    if next_id is not None:
        vals[_FIELDS.index("next_id")] = next_id
    if fp is not None:
        vals[_FIELDS.index("fp")] = fp
        vals[_FIELDS.index("fplen")] = min(len(fp), 200)
    for section, field, value in sections:  # an offset or a length of a section
        vals[9 + 3 * section + field] = value
    try:
        head = _HEAD.pack(*vals).ljust(HEADER_SIZE - 4, b"\0")
    except struct.error:
        return
    data = fix_checksums(head + b"\0" * 4 + good_file[HEADER_SIZE:])
    path = str(tmp_path / "f.idx")
    with open(path, "wb") as f:
        f.write(data)
    exercise(path, verify=True)


def test_the_good_file_passes_the_exercise(tmp_path, good_file):
    path = str(tmp_path / "f.idx")
    with open(path, "wb") as f:
        f.write(good_file)
    exercise(path, verify=True)
    assert len(open_index(path + ".out")) == 40
    os.unlink(path + ".out")
