import numpy as np
import pytest
import torch

from attnhash.codes import as_packed, binarize, hamming_distances, pack_codes, unpack_codes


def test_binarize_sign_zero_is_plus_one():
    assert binarize(np.array([[-0.5, 0.0, 2.0, -0.0]])).tolist() == [[-1, 1, 1, 1]]
    assert binarize(torch.tensor([[0.0, -1e-9]])).tolist() == [[1, -1]]


@pytest.mark.parametrize("bits", [8, 16, 24, 32, 48, 64, 128])
def test_pack_round_trip_and_size(bits):
    rng = np.random.default_rng(bits)
    codes = rng.choice(np.array([-1, 1], dtype=np.int8), size=(37, bits))
    packed = pack_codes(codes)
    assert packed.dtype == np.uint8 and packed.shape == (37, bits // 8)
    assert np.array_equal(unpack_codes(packed, bits), codes)


def test_pack_bit_order_first_bit_is_msb():
    codes = -np.ones((1, 16), dtype=np.int8)
    codes[0, 0] = 1
    codes[0, 15] = 1
    assert pack_codes(codes).tolist() == [[0b10000000, 0b00000001]]


@pytest.mark.parametrize("bits", [8, 24, 64, 128])
def test_hamming_equals_inner_product_formula(bits):
    rng = np.random.default_rng(1)
    q = rng.choice([-1, 1], size=(9, bits))
    d = rng.choice([-1, 1], size=(50, bits))
    expected = (bits - q @ d.T) // 2
    assert np.array_equal(hamming_distances(pack_codes(q), pack_codes(d)), expected)


def test_any_code_length_from_4_bits_packs_with_zero_padding():
    rng = np.random.default_rng(0)
    for bits in (4, 12, 20, 24, 36):
        codes = np.where(rng.random((50, bits)) < 0.5, -1, 1).astype(np.int8)
        packed = pack_codes(codes)
        assert packed.shape == (50, (bits + 7) // 8)
        np.testing.assert_array_equal(unpack_codes(packed, bits), codes)
        np.testing.assert_array_equal(as_packed(codes, bits), packed)
        np.testing.assert_array_equal(as_packed(packed, bits), packed)
        # the padding bits are 0 in every code: Hamming distances are those of the K real bits
        np.testing.assert_array_equal(hamming_distances(packed, packed),
                                      (codes[:, None, :] != codes[None, :, :]).sum(-1))


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 4 bits"):
        pack_codes(np.ones((2, 3)))
    with pytest.raises(ValueError, match="values"):
        as_packed(np.array([[0, 2, 1, 1, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="do not match"):
        hamming_distances(np.zeros((1, 2), np.uint8), np.zeros((1, 3), np.uint8))
    with pytest.raises(ValueError, match="16-bit codes take 2"):
        unpack_codes(np.zeros((1, 1), np.uint8), 16)
