"""LCDSH: pairwise likelihood on the continuous outputs + agreement of feature and code similarities."""

import math

import pytest
import torch

from attnhash.methods.base import TrainContext, create_method
from attnhash.methods.lcdsh import locality_loss

SMALL = dict(bits=32, image_size=32, model={"freeze": "layer3"}, optim={"lr": 1e-4})


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_loss_hand_checked_on_one_pair():
    method = create_method("lcdsh", {"lam": 3.0}, bits=2, num_classes=2, num_train=2)
    u = torch.tensor([[1.0, 1.0], [0.5, -2.0]])  # <u1, u2> = -1.5; codes (1, 1), (1, -1): <b1, b2> = 0
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # similar
    loss, parts = method.loss({"z": u}, {"label": labels, "index": torch.arange(2)}, None)
    theta = -0.75
    # self-pairs are not pairs: only (1, 2) and (2, 1), both alike
    l1 = math.log(1 + math.exp(theta)) - theta
    l2 = (sigmoid(theta) - sigmoid(0.0)) ** 2
    assert parts["likelihood"] == pytest.approx(l1, rel=1e-6)
    assert parts["locality"] == pytest.approx(l2, rel=1e-6)
    assert loss.item() == pytest.approx(l1 + 3.0 * l2, rel=1e-6)


def test_locality_term_vanishes_on_binary_outputs_and_pulls_features_towards_code_similarity():
    b = torch.tensor([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0], [1.0, 1.0, 1.0]])
    assert locality_loss(b, b).item() == pytest.approx(0.0, abs=1e-7)
    u = (0.3 * b).requires_grad_(True)  # same codes, features shrunk towards 0
    loss = locality_loss(u, u)
    loss.backward()
    # the fix is to grow |u| back towards the codes: the gradient points against u
    assert loss.item() > 0 and (u.grad * u).sum() < 0


def test_bank_pairs_leave_out_the_item_itself():
    labels = torch.eye(2)
    method = create_method("lcdsh", {"pairs": "bank"}, bits=2, num_classes=2, num_train=2)
    ctx = TrainContext(network=None, forward=None, optimizer=None, train_labels=labels, num_train=2, epochs=1,
                       device=torch.device("cpu"))
    method.setup(ctx)
    u = torch.tensor([[1.0, 1.0], [0.5, -2.0]])
    _, parts = method.loss({"z": u}, {"label": labels, "index": torch.arange(2)}, ctx)
    theta = -0.75  # dissimilar pair, both directions
    assert parts["likelihood"] == pytest.approx(math.log(1 + math.exp(theta)), rel=1e-6)


def test_training_lowers_the_loss(fmnist, quick_train):
    losses, _, _ = quick_train("lcdsh", fmnist, steps=12, **SMALL)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
