"""CSQ: hash centres (Hadamard / separated Bernoulli), multi-label centroids, the central similarity loss."""

import math

import pytest
import torch

from attnhash.errors import ConfigError
from attnhash.methods.base import create_method
from attnhash.methods.csq import csq_quantization, hadamard, hash_centres, label_centres

SMALL = dict(bits=32, image_size=32, model={"freeze": "layer3"}, optim={"lr": 1e-4})


def pairwise_distances(c: torch.Tensor) -> torch.Tensor:
    k = c.shape[1]
    d = (k - c @ c.t()) / 2
    return d[~torch.eye(len(c), dtype=torch.bool)]


def test_hadamard_rows_are_orthogonal():
    h = hadamard(16)
    assert torch.equal(h @ h.t(), 16 * torch.eye(16))
    with pytest.raises(ValueError):
        hadamard(48)


@pytest.mark.parametrize("bits,classes", [(16, 10), (32, 10), (64, 10), (16, 32), (64, 100)])
def test_power_of_two_bits_use_hadamard_rows_exactly_half_apart(bits, classes):
    c = hash_centres(classes, bits, rows="first")
    h = hadamard(bits)
    assert torch.equal(c, torch.cat([h, -h])[:classes])
    d = pairwise_distances(c)
    # rows of [H; -H]: K/2 apart, except a row and its own negation (K apart)
    assert d.min() == bits / 2 and set(d.unique().tolist()) <= {bits / 2, float(bits)}


def distinct_columns(c: torch.Tensor) -> int:
    return len({tuple(col) for col in c.t().tolist()})


@pytest.mark.parametrize("bits", [32, 64, 128])
def test_the_first_rows_waste_bits(bits):
    # row i, column j of Sylvester's H is (-1)^popcount(i & j): the first 10 rows (i < 16) see only the low 4
    # bits of j, so 10 centres have 16 distinct bit columns whatever K is
    assert distinct_columns(hash_centres(10, bits, rows="first")) == 16


@pytest.mark.parametrize("bits,classes", [(16, 10), (32, 10), (64, 10), (128, 10), (64, 100)])
def test_random_hadamard_rows_stay_exactly_half_apart_and_use_every_bit(bits, classes):
    c = hash_centres(classes, bits, rows="random", seed=3)
    h = torch.cat([hadamard(bits), -hadamard(bits)])
    assert all(any(torch.equal(row, r) for r in h) for row in c)  # rows of [H; -H]
    assert len({tuple(r) for r in c.tolist()}) == classes
    d = pairwise_distances(c)
    assert d.min() == bits / 2 and set(d.unique().tolist()) <= {bits / 2, float(bits)}
    if classes <= bits:
        assert set(d.unique().tolist()) == {bits / 2}  # rows of H alone: never a row and its negation
    if bits > 16:  # more distinct bit columns than the first rows' 16 (2^rank of the chosen row indices)
        assert distinct_columns(c) > 16


def test_random_hadamard_rows_are_seeded():
    a = hash_centres(10, 64, rows="random", seed=0)
    assert torch.equal(a, hash_centres(10, 64, rows="random", seed=0))
    assert not torch.equal(a, hash_centres(10, 64, rows="random", seed=1))


def test_unknown_row_choice_is_refused():
    with pytest.raises(ConfigError, match="hadamard_rows"):
        create_method("csq", {"hadamard_rows": "last"}, bits=16, num_classes=10, num_train=10)


@pytest.mark.parametrize("bits,classes", [(48, 10), (48, 100), (16, 100), (24, 21)])
def test_random_centres_exist_and_are_at_least_a_quarter_of_the_bits_apart(bits, classes):
    c = hash_centres(classes, bits, min_distance=0.25, seed=0)
    assert c.shape == (classes, bits)
    assert set(c.unique().tolist()) == {-1.0, 1.0}
    assert pairwise_distances(c).min() >= bits / 4


def test_random_centres_are_reproducible_and_seeded():
    a = hash_centres(10, 48, seed=0)
    assert torch.equal(a, hash_centres(10, 48, seed=0))
    assert not torch.equal(a, hash_centres(10, 48, seed=1))


def test_impossible_separation_is_refused():
    # 8-bit codes at distance >= 4 from each other: at most 16 exist (the extended Hamming code)
    with pytest.raises(ConfigError, match="cannot place"):
        hash_centres(100, 8, min_distance=0.5)


def test_multi_label_items_take_the_binarised_centroid_with_fixed_tie_bits():
    centres = torch.tensor([[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0], [-1.0, -1.0, -1.0, 1.0]])
    tie = torch.tensor([1.0, -1.0, -1.0, 1.0])
    labels = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    got = label_centres(labels, centres, tie)
    assert got[0].tolist() == centres[1].tolist()  # one label: its own centre
    assert got[1].tolist() == [1.0, -1.0, -1.0, -1.0]  # sum (2, 0, 0, -2): bits 2 and 3 tie
    assert got[2].tolist() == [1.0, -1.0, -1.0, -1.0]  # majority of three


def test_loss_hand_checked():
    method = create_method("csq", {"lam": 1e-4}, bits=16, num_classes=10, num_train=10)
    label = torch.zeros(2, 10)
    label[0, 3] = label[1, 7] = 1.0
    # z = 0: h = 0, (h+1)/2 = 1/2 whatever the centre bit -> BCE = log 2; log cosh(|0| - 1) = log cosh 1
    loss, parts = method.loss({"z": torch.zeros(2, 16)}, {"label": label}, None)
    assert parts["centre"] == pytest.approx(math.log(2), rel=1e-6)
    assert loss.item() == pytest.approx(math.log(2) + 1e-4 * math.log(math.cosh(1.0)), rel=1e-6)
    # codes on their centres: BCE of sigmoid(2z) at |z| = 10 is ~ log(1 + e^-20); the wrong centre is far worse
    on_centre = 10.0 * method.centres[[3, 7]]
    good, _ = method.loss({"z": on_centre}, {"label": label}, None)
    bad, _ = method.loss({"z": on_centre.flip(0)}, {"label": label}, None)
    assert good.item() < 1e-4 and bad.item() > 5.0
    assert csq_quantization(torch.tensor([[1.0, -1.0]])).item() == pytest.approx(0.0, abs=1e-7)


def test_training_lowers_the_loss(fmnist, quick_train):
    losses, method, _ = quick_train("csq", fmnist, steps=12, **SMALL)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
