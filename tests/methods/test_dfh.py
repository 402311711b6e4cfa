import math

import pytest
import torch

from attnhash.config import build_config
from attnhash.methods.base import create_method
from attnhash.methods.dfh import DFHParams, b_step, c_step, center_objective, margin_likelihood
from conftest import setup_context

QUICK = dict(bits=16, backbone="efficientnet_lite0", image_size=32, model={"weights": "auto", "freeze": "block5"})


def test_margin_penalises_correct_pairs_that_are_too_close():
    # K = 2: theta = <u_i, u_j> / 2. Items 0, 1 similar with theta = 2; items 0, 2 dissimilar with theta = -2.
    u = torch.tensor([[2.0, 0.0], [2.0, 0.0], [-2.0, 0.0]])
    labels = torch.eye(2)[[0, 0, 1]]
    s = (labels @ labels.t() > 0).float()
    mask = 1 - torch.eye(3)
    # every pair is on the right side of 0 by |theta| = 2: with margin m each costs log(1 + e^{m - 2})
    for m in (0.0, 1.0, 3.0):
        expected = math.log(1 + math.exp(m - 2.0))
        assert margin_likelihood(u, u, s, m, mask).item() == pytest.approx(expected)
    # the margin raises the loss of pairs inside it: the push away from 0
    assert margin_likelihood(u, u, s, 3.0, mask) > margin_likelihood(u, u, s, 0.0, mask)


def test_b_step_is_the_sign_of_code_plus_class_centre():
    u = torch.tensor([[0.2, -0.3, 0.0]])
    labels = torch.tensor([[0.0, 1.0]])
    centers = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 1.0]])
    assert b_step(u, labels, centers, mu=1.0).tolist() == [[-1.0, -1.0, 1.0]]  # sign(0.2 - 1, -1.3, 1)
    assert b_step(u, labels, centers, mu=0.0).tolist() == [[1.0, -1.0, 1.0]]  # sign(0) = +1
    two_labels = torch.tensor([[1.0, 1.0]])  # mean of both centres: (0, 0, 1)
    assert b_step(u, two_labels, centers, mu=1.0).tolist() == [[1.0, -1.0, 1.0]]


def test_c_step_finds_separated_binary_centres():
    torch.manual_seed(0)
    k = 8
    labels = torch.eye(2)[[0, 0, 0, 1, 1, 1]]
    code0 = torch.tensor([1.0, 1, 1, 1, -1, -1, 1, -1])
    codes = torch.stack([code0] * 3 + [-code0] * 3)
    codes[0, 0] = -1  # one noisy bit: the centre follows the majority
    p = DFHParams()
    v0 = torch.zeros(2, k)
    v = c_step(v0, labels, codes, p)
    assert torch.equal(torch.sign(v[0]), code0) and torch.equal(torch.sign(v[1]), -code0)
    y = labels
    assert center_objective(v, y, codes, p.nu, p.nta) < center_objective(v0, y, codes, p.nu, p.nta)
    # the between-class term asks <c_0, c_1> = -K: opposite centres
    assert (torch.sign(v[0]) @ torch.sign(v[1])).item() == -k


def test_network_loss_hand_computed():
    m = create_method("dfh", {"pairs": "batch", "margin": 1.0, "eta": 0.5}, bits=2, num_classes=2, num_train=2)
    z = torch.tensor([[0.5, -2.0], [1.0, 1.0]])
    labels = torch.eye(2)
    loss, parts = m.loss({"z": z}, {"label": labels}, None)
    # centres are 0 before any C-step: b = sign(u) = [[1, -1], [1, 1]]
    quant = ((1 - 0.5) ** 2 + (-1 + 2) ** 2 + 0 + 0) / 4
    theta = 0.5 * (0.5 * 1.0 + -2.0 * 1.0)  # dissimilar pair, both orders
    assert parts["quantization"] == pytest.approx(quant)
    assert parts["likelihood"] == pytest.approx(math.log(1 + math.exp(theta + 1.0)))
    assert loss.item() == pytest.approx(parts["likelihood"] + 0.5 * quant)


@pytest.mark.parametrize("pairs", ["bank", "batch"])
def test_epoch_c_step_uses_every_training_code(pairs):
    labels = torch.eye(3)[[0, 0, 1, 1, 2, 2]]
    m = create_method("dfh", {"pairs": pairs}, bits=8, num_classes=3, num_train=6)
    ctx = setup_context(6, labels)
    m.setup(ctx)
    torch.manual_seed(0)
    z = torch.randn(3, 8)[[0, 0, 1, 1, 2, 2]]  # one code per class
    for part in (slice(0, 3), slice(3, 6)):  # two batches: every training item seen once
        m.loss({"z": z[part]}, {"label": labels[part], "index": torch.arange(6)[part]}, ctx)
    m.on_epoch_start(ctx)
    assert m.centers.abs().sum().item() == 0.0  # no C-step before the first epoch is over
    ctx.epoch = 1
    m.on_epoch_start(ctx)
    assert m.centers.abs().min().item() == 1.0
    assert len({tuple(c.tolist()) for c in m.centers}) == 3


def test_recipe():
    p = build_config("dfh").method.params
    assert (p["mu"], p["nu"], p["nta"], p["eta"], p["pairs"]) == (1.0, 1.0, 1.0, 0.5, "bank")


def test_training_updates_centres_each_epoch_and_lowers_the_loss(fmnist, quick_train):
    # 2 epochs of 6 steps over the same 3 batches; the C-step runs at the start of epoch 2
    losses, method, _ = quick_train("dfh", fmnist, steps=12, epochs=2, batch_size=16, **QUICK)
    centers = method.centers
    assert centers.abs().min().item() == 1.0  # binary centres
    assert len({tuple(c.tolist()) for c in centers}) == centers.shape[0]  # one distinct centre per class
    # with the centres fixed, the same three batches cost less three steps later (in epoch 1 the bank is
    # still filling up, which changes the pairs each step sees)
    assert sum(losses[9:12]) < sum(losses[6:9])
