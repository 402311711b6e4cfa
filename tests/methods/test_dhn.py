import math

import pytest
import torch

from attnhash.config import build_config
from attnhash.methods.base import create_method
from attnhash.methods.dhn import dhn_quantization, log_cosh, pairwise_cross_entropy

QUICK = dict(bits=16, backbone="efficientnet_lite0", image_size=32, model={"weights": "auto", "freeze": "block5"})


def test_log_cosh_hand_values_and_stability():
    x = torch.tensor([0.0, 0.5, -1.0, 50.0, -200.0])
    values = log_cosh(x)
    assert values[:3].tolist() == pytest.approx([0.0, math.log(math.cosh(0.5)), math.log(math.cosh(1.0))], abs=1e-6)
    assert values[3].item() == pytest.approx(50.0 - math.log(2.0))  # cosh(50) overflows nothing
    assert values[4].item() == pytest.approx(200.0 - math.log(2.0))
    assert torch.isfinite(values).all()


def test_quantization_loss_is_zero_at_binary_codes_and_smooth_near_them():
    u = torch.tensor([[1.0, -1.0, 0.0]], requires_grad=True)
    q = dhn_quantization(u)
    assert q.item() == pytest.approx(math.log(math.cosh(1.0)) / 3)
    q.backward()
    # d/du log cosh(|u| - 1) = tanh(|u| - 1) sign(u): 0 at +-1 (smooth, unlike | |u| - 1 |)
    assert u.grad[0, :2].tolist() == pytest.approx([0.0, 0.0], abs=1e-7)


def test_pairwise_cross_entropy_hand_computed():
    u = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    labels = torch.eye(2)[[0, 0, 1]]
    s = (labels @ labels.t() > 0).float()
    mask = 1 - torch.eye(3)
    # <u0,u1> = 1 (similar): log(1+e) - 1; <u0,u2> = -1 (dissimilar): log(1+e^-1); <u1,u2> = -1: log(1+e^-1)
    expected = (2 * (math.log(1 + math.e) - 1) + 4 * math.log(1 + math.exp(-1))) / 6
    assert pairwise_cross_entropy(u, u, s, 1.0, mask).item() == pytest.approx(expected)


def test_method_loss_combines_both_terms_on_tanh_codes():
    m = create_method("dhn", {"lam": 0.5}, bits=2, num_classes=2, num_train=3)
    z = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-1.0, 3.0]])
    labels = torch.eye(2)[[0, 0, 1]]
    loss, parts = m.loss({"z": z}, {"label": labels}, None)
    u = torch.tanh(z)
    s = (labels @ labels.t() > 0).float()
    ce = pairwise_cross_entropy(u, u, s, 1.0, 1 - torch.eye(3))
    assert parts["cross_entropy"] == pytest.approx(ce.item())
    assert loss.item() == pytest.approx(ce.item() + 0.5 * dhn_quantization(u).item())
    ablated = create_method("dhn", {"lam": 0.5}, bits=2, num_classes=2, num_train=3, ablate=("quantization",))
    loss_ce, parts_ce = ablated.loss({"z": z}, {"label": labels}, None)
    assert "quantization" not in parts_ce and loss_ce.item() == pytest.approx(ce.item())


def test_recipe():
    assert build_config("dhn").method.params == {"lam": 0.1, "scale": 1.0, "pairs": "batch"}


def test_training_lowers_the_loss(fmnist, quick_train):
    losses, _, _ = quick_train("dhn", fmnist, steps=12, **QUICK)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
