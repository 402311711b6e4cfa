import math

import pytest
import torch

from attnhash.codes import sign
from attnhash.losses.pairwise import MemoryBank, pairwise_likelihood
from attnhash.losses.quantization import quantization_loss


def test_pairwise_likelihood_hand_computed():
    u = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # theta = <u_i,u_j>/2 = [[1, 0], [0, 1]]; nll = log(1+e^theta) - s*theta
    expected = (2 * (math.log(1 + math.e) - 1) + 2 * math.log(2)) / 4
    assert pairwise_likelihood(u, u, s).item() == pytest.approx(expected, rel=1e-6)


def test_pairwise_likelihood_is_stable_for_large_inner_products():
    u = torch.full((2, 64), 50.0)
    s = torch.ones(2, 2)
    value = pairwise_likelihood(u, u, s)
    assert torch.isfinite(value) and value.item() == pytest.approx(0.0, abs=1e-6)


def test_quantization_and_sign_convention():
    u = torch.tensor([[0.5, -2.0, 0.0]])
    assert sign(u).tolist() == [[1.0, -1.0, 1.0]]
    assert quantization_loss(u).item() == pytest.approx((0.25 + 1.0 + 1.0) / 3)


def test_memory_bank_masks_unfilled_rows():
    labels = torch.eye(3)
    bank = MemoryBank(3, 4, labels)
    bank.update(torch.tensor([1]), torch.ones(1, 4))
    codes, s, mask = bank.pairs(labels[:1])
    assert mask.tolist() == [[0.0, 1.0, 0.0]] and s.tolist() == [[1.0, 0.0, 0.0]]


def test_dpsh_training_lowers_loss(fmnist, quick_train):
    # 8 passes over the same 3 batches; the first pass fills the memory bank, the last must score lower.
    losses, _, _ = quick_train("dpsh", fmnist, steps=24, epochs=8, backbone="efficientnet_lite0", image_size=32,
                               model={"weights": "auto", "freeze": "block5"}, optim={"lr": 3e-4})
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05
