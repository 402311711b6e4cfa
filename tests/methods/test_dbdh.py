"""DBDH: pairwise likelihood on straight-through discrete codes against a bank of codes, plus balance."""

import math

import pytest
import torch

from attnhash.losses.pairwise import pairwise_likelihood
from attnhash.methods.base import TrainContext, create_method
from attnhash.methods.dbdh import balance_term

SMALL = dict(bits=32, image_size=32, model={"freeze": "layer3"}, optim={"lr": 1e-4})


def test_balance_term_hand_checked():
    b = torch.tensor([[1.0, 1.0, 1.0, -1.0], [1.0, -1.0, 1.0, -1.0]])
    # per code: means over bits 0.5 and 0 -> (0.25 + 0) / 2
    assert balance_term(b, "code", 2.0).item() == pytest.approx(0.125)
    # per bit: means over items 1, 0, 1, -1 -> (1 + 0 + 1 + 1) / 4
    assert balance_term(b, "bit", 2.0).item() == pytest.approx(0.75)
    assert balance_term(b, "code", 1.0).item() == pytest.approx(0.25)


def hand_case():
    z = torch.tensor([[0.3, 2.0, 0.1, 5.0], [0.2, 0.4, 3.0, -0.1], [-1.0, -0.5, -2.0, 0.7]], requires_grad=True)
    b = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, -1.0], [-1.0, -1.0, -1.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # items 1 and 2 alike, 3 apart
    return z, b, labels


def test_a_batch_collapsed_to_one_code_is_penalised_by_the_bit_balance_only():
    # the failure mode of straight-through codes with in-batch pairs: every item drifts to one shared code
    shared = torch.tensor([1.0, -1.0, 1.0, -1.0]).repeat(8, 1)
    assert balance_term(shared, "code").item() == 0.0  # a balanced code: nothing to correct
    assert balance_term(shared, "bit").item() == 1.0  # the largest bit imbalance there is
    assert create_method("dbdh", None, bits=4, num_classes=2, num_train=3).params.balance == "bit"


def test_loss_hand_checked_on_the_discrete_codes_of_a_batch():
    z, b, labels = hand_case()
    method = create_method("dbdh", {"alpha": 0.1, "theta_scale": 2.5}, bits=4, num_classes=2, num_train=3)
    loss, parts = method.loss({"z": z}, {"label": labels, "index": torch.arange(3)}, None)
    # <b_i, b_j> = 2, -2, -4 -> theta = 2.5 * <.> / 4 = 1.25, -1.25, -2.5 (pairs 12, 13, 23)
    a, c = math.log(1 + math.exp(-1.25)), math.log(1 + math.exp(-2.5))
    likelihood = (2 * a + 2 * a + 2 * c) / 6  # six ordered pairs i != j
    balance = 4 * (1 / 3) ** 2 / 4  # every bit's mean over the three items is 1/3
    assert parts["likelihood"] == pytest.approx(likelihood, rel=1e-6)
    assert loss.item() == pytest.approx(likelihood + 0.1 * balance, rel=1e-6)


def test_gradient_reaches_z_as_the_gradient_at_the_codes_clipped_beyond_one():
    z, b, labels = hand_case()
    # the same loss written directly on b, no sign involved
    b = b.requires_grad_(True)
    s = (labels @ labels.t() > 0).float()
    direct = pairwise_likelihood(b, b, s, scale=2.5 / 4, mask=1 - torch.eye(3)) + 0.1 * balance_term(b)
    direct.backward()
    inside = (z.abs() <= 1).float()
    for clip, expected in ((None, b.grad), (1.0, b.grad * inside)):
        method = create_method("dbdh", {"ste_clip": clip}, bits=4, num_classes=2, num_train=3)
        z.grad = None
        loss, _ = method.loss({"z": z}, {"label": labels, "index": torch.arange(3)}, None)
        loss.backward()
        assert loss.item() == pytest.approx(direct.item(), rel=1e-6)
        assert torch.allclose(z.grad, expected)
    assert 0 < inside.sum() < inside.numel() and z.grad.abs().sum() > 0


def test_bank_pairs_keep_the_discrete_codes():
    z, b, labels = hand_case()
    method = create_method("dbdh", {"pairs": "bank"}, bits=4, num_classes=2, num_train=3)
    ctx = TrainContext(network=None, forward=None, optimizer=None, train_labels=labels, num_train=3, epochs=1,
                       device=torch.device("cpu"))
    method.setup(ctx)
    method.loss({"z": z}, {"label": labels, "index": torch.arange(3)}, ctx)
    assert torch.equal(method.bank.codes, b)


def test_training_lowers_the_loss(fmnist, quick_train):
    losses, _, _ = quick_train("dbdh", fmnist, steps=12, **SMALL)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
