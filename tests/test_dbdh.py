"""DBDH: pairwise likelihood on straight-through discrete codes against a bank of codes, plus balance."""

import math

import pytest
import torch

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


def test_loss_hand_checked_on_discrete_codes_with_identity_gradient():
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    method = create_method("dbdh", {"alpha": 0.1, "p": 2.0, "balance": "code"}, bits=2, num_classes=2, num_train=2)
    ctx = TrainContext(network=None, forward=None, optimizer=None, train_labels=labels, num_train=2, epochs=1,
                       device=torch.device("cpu"))
    method.setup(ctx)
    z = torch.tensor([[0.3, 2.0], [-0.1, 0.4]], requires_grad=True)  # codes (1, 1) and (-1, 1)
    loss, parts = method.loss({"z": z}, {"label": labels, "index": torch.arange(2)}, ctx)
    # theta = <b_i, b_j>/2 = [[1, 0], [0, 1]], s = I: nll = log(1+e) - 1 on the diagonal, log 2 off it
    likelihood = (2 * (math.log(1 + math.e) - 1) + 2 * math.log(2)) / 4
    balance = (1.0 + 0.0) / 2  # code means 1 and 0
    assert parts["likelihood"] == pytest.approx(likelihood, rel=1e-6)
    assert loss.item() == pytest.approx(likelihood + 0.1 * balance, rel=1e-6)
    assert method.bank.codes.tolist() == [[1.0, 1.0], [-1.0, 1.0]]  # the bank keeps the discrete codes
    # the gradient reaches z unchanged from the codes (straight through), even where |z| > 1
    loss.backward()
    b = torch.tensor([[1.0, 1.0], [-1.0, 1.0]], requires_grad=True)
    again, _ = method.loss({"z": b}, {"label": labels, "index": torch.arange(2)}, ctx)
    b_grad = torch.autograd.grad(again, b)[0]
    assert torch.allclose(z.grad, b_grad) and z.grad.abs().min() > 0


def test_training_lowers_the_loss(fmnist, quick_train):
    losses, _, _ = quick_train("dbdh", fmnist, steps=12, **SMALL)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
