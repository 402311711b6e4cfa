"""Binary codes: binarisation, bit packing and Hamming distances.

Conventions used everywhere in attnhash:
- a code is a vector in {-1, +1}^K with sign(0) = +1;
- packed, bit 1 stands for +1, ceil(K/8) bytes per code, first code bit in the most significant bit of byte 0
  (numpy.packbits' default order), so packed codes are the byte layout FAISS and Milvus binary indexes use;
  any K >= 4 works (12-bit tables): the last byte is padded with zero bits, the same in every code, so
  Hamming distances are unchanged;
- Hamming distance = (K - <b_q, b_d>) / 2 = popcount(q XOR d).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "sign",
    "binarize",
    "pack_codes",
    "unpack_codes",
    "as_packed",
    "hamming_distances",
    "popcount",
    "check_bits",
    "code_bytes",
    "MIN_BITS",
    "asymmetric_scores",
]

MIN_BITS = 4

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def check_bits(bits: int) -> int:
    """A valid code length K (an integer >= 4)."""
    bits = int(bits)
    if bits < MIN_BITS:
        raise ValueError(f"code length must be at least {MIN_BITS} bits, got {bits}")
    return bits


def code_bytes(bits: int) -> int:
    """Bytes of one packed code of `bits` bits."""
    return (check_bits(bits) + 7) // 8


def sign(x):
    """sign with sign(0) = +1, the convention of attnhash codes, for NumPy arrays and torch tensors alike:
    the result has x's type and (floating) dtype, so it can stand in a loss as well as make codes."""
    positive = x >= 0
    if hasattr(positive, "to"):  # a torch tensor, without importing torch here
        return positive.to(x.dtype) * 2 - 1
    return positive.astype(np.asarray(x).dtype if np.asarray(x).dtype.kind == "f" else np.int8) * 2 - 1


def binarize(values) -> np.ndarray:
    """Real-valued outputs (array or tensor) -> int8 codes in {-1, +1}, with sign(0) = +1."""
    if hasattr(values, "detach"):  # torch tensor, without importing torch here
        values = values.detach().float().cpu().numpy()
    return sign(np.asarray(values)).astype(np.int8)


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """{-1,+1} (or {0,1}) codes of shape (n, K) -> uint8 array (n, K/8)."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be a 2-D array (n, K), got shape {codes.shape}")
    check_bits(codes.shape[1])
    return np.packbits(codes > 0, axis=1)


def unpack_codes(packed: np.ndarray, bits: int | None = None) -> np.ndarray:
    """uint8 (n, ceil(K/8)) -> int8 codes in {-1, +1} of shape (n, K); `bits` None: 8 per byte."""
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.ndim != 2:
        raise ValueError(f"packed codes must be a 2-D uint8 array (n, K/8), got shape {packed.shape}")
    bits = packed.shape[1] * 8 if bits is None else check_bits(bits)
    if code_bytes(bits) != packed.shape[1]:
        raise ValueError(f"packed codes hold {packed.shape[1]} bytes per row, {bits}-bit codes take {code_bytes(bits)}")
    return (np.unpackbits(packed, axis=1, count=bits).astype(np.int8) * 2 - 1)


def as_packed(codes: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Accept codes as {-1,+1} (n, K) or already packed uint8 (n, K/8); return packed uint8.

    A uint8 array is taken as packed unless its values are all in {0, 1} and `bits` says it is unpacked.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be a 2-D array, got shape {codes.shape}")
    if codes.dtype == np.uint8 and (bits is None or (codes.shape[1] == code_bytes(bits) and codes.shape[1] != bits)):
        return np.ascontiguousarray(codes)
    values = np.unique(codes[: min(len(codes), 4096)])
    if not np.isin(values, (-1, 1)).all() and not np.isin(values, (0, 1)).all():
        raise ValueError(
            "codes must be packed uint8 bytes or a {-1,+1} / {0,1} matrix; found values "
            f"{values[:5].tolist()}{'...' if len(values) > 5 else ''}"
        )
    if bits is not None and codes.shape[1] != bits:
        raise ValueError(f"codes have {codes.shape[1]} bits per row, expected {bits}")
    return pack_codes(codes)


if hasattr(np, "bitwise_count"):  # numpy >= 2.0: hardware popcount

    def popcount(x: np.ndarray) -> np.ndarray:
        return np.bitwise_count(x)

else:  # pragma: no cover - numpy 1.x

    def popcount(x: np.ndarray) -> np.ndarray:
        return _POPCOUNT8[x]


def hamming_distances(query_packed: np.ndarray, db_packed: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances between packed codes: (nq, B) x (nd, B) -> (nq, nd) int32.

    Works on 64-bit words when the code length allows it (8x fewer popcounts than bytes).
    """
    q = np.ascontiguousarray(query_packed, dtype=np.uint8)
    d = np.ascontiguousarray(db_packed, dtype=np.uint8)
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise ValueError(f"packed code shapes do not match: queries {q.shape}, database {d.shape}")
    nbytes = q.shape[1]
    if nbytes % 8 == 0:
        q, d = q.view(np.uint64), d.view(np.uint64)
    out = np.zeros((q.shape[0], d.shape[0]), dtype=np.int32)
    for w in range(q.shape[1]):
        out += popcount(q[:, w : w + 1] ^ d[None, :, w][0]).astype(np.int32)
    return out


def asymmetric_scores(query_real: np.ndarray, db_packed: np.ndarray) -> np.ndarray:
    """<tanh(z_q), b_d> * 2^20 for real-valued query outputs z (nq, K) and packed database codes (nd, K/8):
    (nq, nd) float64. Ranks items at equal Hamming distance (a larger score is closer).

    tanh(z) is rounded to multiples of 2^-20 first, so every sum is an integer below 2^53 and exact in float64
    whatever the summation order: equal codes score exactly equally, and so do codes whose scores tie."""
    z = np.round(np.tanh(np.asarray(query_real, dtype=np.float64)) * float(1 << 20))
    b = unpack_codes(db_packed, z.shape[1]).astype(np.float64)
    return z @ b.T
