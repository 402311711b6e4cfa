"""The attnhash index file: one file, memory-mappable, checksummed, written atomically.

Layout (little-endian; every section starts at a multiple of 64 bytes):

    [header, 512 bytes]   magic "ATTNHIDX", version, bits, count, next id, fingerprint, section table
                          (offset, length, crc32 of each section), crc32 of the header itself
    [info]                UTF-8 JSON: index-level facts (class names, run folder, source, creation time)
    [codes]               uint8 (count, bits/8), packed codes in insertion order
    [ids]                 int64 (count,)
    [meta offsets]        uint64 (count+1,) into the metadata blob; absent when no item has metadata
    [meta blob]           compact JSON per item, concatenated

Loading checks the header's own checksum, the section table against the file size (a truncated file is
refused before any data is read), then the crc32 of every section (about 0.8 GB/s here: 0.2 s for 1e7
64-bit codes with ids). `verify=False` skips the section checksums for very large files; `verify_file`
checks them later. Sections are read with numpy.memmap (mmap=True) so a large index opens without copying.

Writes go to a temporary file in the same folder, are fsync'ed, then os.replace'd over the target and the
folder fsync'ed: a crash or kill at any point leaves either the old file or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attnhash.atomic import atomic_open
from attnhash.codes import MIN_BITS, code_bytes
from attnhash.errors import IndexFileError

__all__ = ["MAGIC", "VERSION", "IndexData", "write_index_file", "read_index_file", "read_header", "verify_file"]

MAGIC = b"ATTNHIDX"
VERSION = 1
HEADER_SIZE = 512
ALIGN = 64
_SECTIONS = ("info", "codes", "ids", "meta_offsets", "meta")
_FP_MAX = 128
_FP_CHARS = re.compile(rb"[!-~]+")  # a fingerprint is printable ASCII without spaces (attnhash's: sha256 hex)
MAX_BITS = 8192  # far above any code length in use (16-128); bounds what a crafted header can make us allocate
# magic, version, header size, bits, code size, count, next id, fingerprint length, fingerprint,
# then (offset, length, crc32) per section; the header crc32 sits in the last 4 bytes of the header.
_HEAD = struct.Struct("<8sIIIIQqI%ds" % _FP_MAX + "QQI" * len(_SECTIONS))
assert _HEAD.size <= HEADER_SIZE - 4

# Test hook: called with the section name after each section is written (the atomic-write test kills the
# writer from here). None in normal use.
_after_section_hook: Callable[[str], None] | None = None

_CHUNK = 1 << 24


@dataclass
class IndexData:
    """What an index file holds (arrays may be read-only memory maps)."""

    path: str
    bits: int
    count: int
    next_id: int
    fingerprint: str | None
    info: dict[str, Any]
    codes: np.ndarray
    ids: np.ndarray
    meta_offsets: np.ndarray | None
    meta_blob: np.ndarray | None
    sections: dict[str, tuple[int, int, int]] = field(default_factory=dict)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _write_crc(f, data: memoryview | bytes, crc: int = 0) -> int:
    """Write `data` in chunks, returning the running crc32."""
    mv = memoryview(data).cast("B")
    for start in range(0, len(mv), _CHUNK):
        chunk = mv[start : start + _CHUNK]
        f.write(chunk)
        crc = zlib.crc32(chunk, crc)
    return crc


def _bytes_of(arr: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(arr)).cast("B")


def write_index_file(
    path: str | os.PathLike,
    *,
    bits: int,
    fingerprint: str | None,
    next_id: int,
    info: dict[str, Any],
    codes: np.ndarray,
    ids: np.ndarray,
    meta_offsets: np.ndarray | None,
    meta_segments: Sequence[memoryview | bytes] = (),
) -> None:
    """Write an index file atomically (see the module docstring)."""
    path = os.fspath(path)
    count = len(ids)
    code_size = code_bytes(bits)
    if codes.shape != (count, code_size):
        raise ValueError(f"codes shape {codes.shape} does not match {count} ids of {bits} bits")
    fp = (fingerprint or "").encode("ascii", errors="replace")
    if len(fp) > _FP_MAX:
        raise ValueError(f"fingerprint longer than {_FP_MAX} characters")
    if fp and not _FP_CHARS.fullmatch(fp):
        raise ValueError(f"fingerprint {fingerprint!r} is not printable ASCII without spaces")
    if next_id < 0 or next_id < count:
        raise ValueError(f"next id {next_id} cannot follow {count} distinct ids >= 0")
    info_bytes = json.dumps(info, ensure_ascii=False, sort_keys=True, default=str).encode()
    meta_len = sum(len(memoryview(s).cast("B")) for s in meta_segments) if meta_offsets is not None else 0

    lengths = {
        "info": len(info_bytes),
        "codes": count * code_size,
        "ids": count * 8,
        "meta_offsets": (count + 1) * 8 if meta_offsets is not None else 0,
        "meta": meta_len,
    }
    offsets, pos = {}, HEADER_SIZE
    for name in _SECTIONS:
        offsets[name] = pos
        pos = _align(pos + lengths[name]) if name != "meta" else pos + lengths[name]

    with atomic_open(path, "wb") as f:
        f.write(b"\0" * HEADER_SIZE)  # placeholder; the real header goes in last
        crcs = {}
        payloads: dict[str, Callable[[], list]] = {
            "info": lambda: [info_bytes],
            "codes": lambda: [_bytes_of(codes)],
            "ids": lambda: [_bytes_of(ids.astype("<i8", copy=False))],
            "meta_offsets": lambda: [] if meta_offsets is None else [_bytes_of(meta_offsets.astype("<u8", copy=False))],
            "meta": lambda: list(meta_segments) if meta_offsets is not None else [],
        }
        for name in _SECTIONS:
            f.seek(offsets[name])
            crc = 0
            for part in payloads[name]():
                crc = _write_crc(f, part, crc)
            crcs[name] = crc
            if _after_section_hook is not None:
                f.flush()
                _after_section_hook(name)
        f.truncate(pos)
        fields = [MAGIC, VERSION, HEADER_SIZE, bits, code_size, count, int(next_id), len(fp), fp]
        for name in _SECTIONS:
            fields += [offsets[name], lengths[name], crcs[name]]
        head = _HEAD.pack(*fields).ljust(HEADER_SIZE - 4, b"\0")
        f.seek(0)
        f.write(head + struct.pack("<I", zlib.crc32(head)))


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check the header and section table (no payload read). IndexFileError when wrong."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
    except FileNotFoundError:
        raise IndexFileError(f"index file {path} does not exist") from None
    except IsADirectoryError:
        raise IndexFileError(f"{path} is a folder, not an index file") from None
    except OSError as err:
        raise IndexFileError(f"cannot read index file {path}: {err.strerror or err}") from None
    if len(raw) < len(MAGIC) or raw[: len(MAGIC)] != MAGIC:
        raise IndexFileError(f"{path} is not an attnhash index file (no {MAGIC.decode()} magic)")
    if len(raw) < HEADER_SIZE:
        raise IndexFileError(f"index file {path} is truncated: {size} bytes, shorter than its {HEADER_SIZE}-byte header")
    (stored_crc,) = struct.unpack("<I", raw[-4:])
    if zlib.crc32(raw[:-4]) != stored_crc:
        raise IndexFileError(f"index file {path} is corrupted: header checksum mismatch")
    vals = _HEAD.unpack(raw[: _HEAD.size])
    _, version, hsize, bits, code_size, count, next_id, fplen, fp = vals[:9]
    if version != VERSION:
        raise IndexFileError(f"index file {path} has format version {version}; this attnhash reads version {VERSION}")
    if hsize != HEADER_SIZE or bits < MIN_BITS or code_size != code_bytes(max(bits, MIN_BITS)) or fplen > _FP_MAX:
        raise IndexFileError(f"index file {path} is corrupted: inconsistent header")
    if bits > MAX_BITS:
        raise IndexFileError(f"index file {path} is corrupted: {bits}-bit codes (at most {MAX_BITS})")
    if fplen and not _FP_CHARS.fullmatch(fp[:fplen]):
        raise IndexFileError(f"index file {path} is corrupted: its model fingerprint is not printable ASCII")
    # ids are distinct and >= 0, all below the next id: so 0 <= count <= next id
    if next_id < 0 or next_id < count:
        raise IndexFileError(f"index file {path} is corrupted: next id {next_id} with {count} items (ids would "
                             "be reused)")
    sections = {}
    rest = vals[9:]
    for i, name in enumerate(_SECTIONS):
        sections[name] = tuple(rest[3 * i : 3 * i + 3])
    expect = {"codes": count * code_size, "ids": count * 8}
    for name, want in expect.items():
        if sections[name][1] != want:
            raise IndexFileError(f"index file {path} is corrupted: {name} section holds {sections[name][1]} bytes, expected {want}")
    if sections["meta_offsets"][1] not in (0, (count + 1) * 8):
        raise IndexFileError(f"index file {path} is corrupted: metadata offsets section has the wrong size")
    at = HEADER_SIZE
    for name in _SECTIONS:  # in order, after the header, not overlapping
        off, length, _ = sections[name]
        if off < at:
            raise IndexFileError(f"index file {path} is corrupted: its {name} section overlaps what comes before")
        at = off + length
    end = max(off + length for off, length, _ in sections.values())
    if size < end:
        raise IndexFileError(f"index file {path} is truncated: {size} bytes, its header describes {end}")
    if size > end:
        raise IndexFileError(f"index file {path} is corrupted: {size - end} unexpected bytes after the last section")
    return {
        "path": path,
        "version": version,
        "bits": bits,
        "count": count,
        "next_id": next_id,
        "fingerprint": fp[:fplen].decode("ascii") or None,
        "sections": sections,
        "size": size,
    }


def _check_crc(path: str, name: str, data: np.ndarray | bytes, crc: int) -> None:
    mv = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    got = 0
    for start in range(0, len(mv), _CHUNK):
        got = zlib.crc32(mv[start : start + _CHUNK], got)
    if got != crc:
        raise IndexFileError(f"index file {path} is corrupted: checksum mismatch in its {name} section")


def read_index_file(path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> IndexData:
    """Open an index file; arrays are memory-mapped read-only when `mmap`, else read into memory."""
    head = read_header(path)
    path = head["path"]
    secs = head["sections"]
    if mmap:
        buf = np.memmap(path, dtype=np.uint8, mode="r") if head["size"] else np.zeros(0, np.uint8)
    else:
        buf = np.fromfile(path, dtype=np.uint8)
        if len(buf) != head["size"]:
            raise IndexFileError(f"index file {path} changed while being read")

    def section(name: str) -> np.ndarray:
        off, length, _ = secs[name]
        return buf[off : off + length]

    if verify:
        for name in _SECTIONS:
            _check_crc(path, name, section(name), secs[name][2])
    else:  # the small info section is always checked: a bad one would mislead every later step
        _check_crc(path, "info", section("info"), secs["info"][2])
    try:
        info = json.loads(section("info").tobytes() or b"{}")
    except ValueError:
        raise IndexFileError(f"index file {path} is corrupted: unreadable info section") from None
    if not isinstance(info, dict):
        raise IndexFileError(f"index file {path} is corrupted: its info section is not a JSON object")
    count, code_size = head["count"], code_bytes(head["bits"])
    codes = section("codes").reshape(count, code_size)
    ids = section("ids").view("<i8")
    meta_offsets = section("meta_offsets").view("<u8") if secs["meta_offsets"][1] else None
    meta_blob = section("meta") if meta_offsets is not None else None
    if meta_offsets is not None and (meta_offsets[0] != 0 or int(meta_offsets[-1]) != secs["meta"][1]):
        raise IndexFileError(f"index file {path} is corrupted: metadata offsets do not match the metadata section")
    # new ids start at the next id: one below it in the file would be issued twice (a pass over the ids, ~30 ms
    # per 1e7, so it is made even when the checksums are skipped)
    if count and (int(ids.min()) < 0 or int(ids.max()) >= head["next_id"]):
        raise IndexFileError(f"index file {path} is corrupted: ids outside 0..{head['next_id'] - 1} (0 to its next "
                             "id)")
    if verify and meta_offsets is not None and (meta_offsets[1:] < meta_offsets[:-1]).any():
        raise IndexFileError(f"index file {path} is corrupted: metadata offsets go backwards")
    return IndexData(
        path=path,
        bits=head["bits"],
        count=count,
        next_id=head["next_id"],
        fingerprint=head["fingerprint"],
        info=info,
        codes=codes,
        ids=ids,
        meta_offsets=meta_offsets,
        meta_blob=meta_blob,
        sections=secs,
    )


def verify_file(path: str | os.PathLike) -> dict[str, Any]:
    """Full integrity check of an index file (header, sizes, every section's checksum); returns the header."""
    read_index_file(path, mmap=True, verify=True)
    return read_header(path)
