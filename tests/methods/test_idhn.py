import math

import pytest
import torch

from attnhash.config import build_config
from attnhash.methods.base import create_method
from attnhash.methods.idhn import hard_pairs, idhn_pair_losses, idhn_quantization, soft_similarity

QUICK = dict(bits=16, backbone="efficientnet_lite0", image_size=32, model={"weights": "auto", "freeze": "block5"})


def test_soft_similarity_is_the_label_cosine():
    labels = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    s = soft_similarity(labels, labels)
    assert s[0, 1].item() == pytest.approx(1 / math.sqrt(2))  # one of two labels shared
    assert s[0, 2].item() == 0.0 and s[0, 3].item() == pytest.approx(1.0)
    assert hard_pairs(s)[0].tolist() == [1.0, 0.0, 1.0, 1.0]  # 0 and 1 are hard, 0.707 is soft


def test_pair_losses_hand_computed():
    # K = 2. Item 0 {a, b}, item 1 {a}: soft pair, s = 1/sqrt(2). Item 2 {c}: hard dissimilar to both.
    u = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    s = soft_similarity(labels, labels)
    mask = 1 - torch.eye(3)
    ce, mse = idhn_pair_losses(u, u, s, beta=5.0, mask=mask)
    # hard pairs: (0,2) <u,u> = -2 -> theta = 5 * -2 / 2 = -5, s = 0: log(1 + e^-5); (1,2) <u,u> = 0: log 2
    ce_expected = (2 * math.log(1 + math.exp(-5)) + 2 * math.log(2)) / 6
    # soft pair (0,1): <u,u> = 0 -> implied similarity (0/2 + 1)/2 = 0.5; K (0.5 - 1/sqrt 2)^2
    mse_expected = 2 * (2 * (0.5 - 1 / math.sqrt(2)) ** 2) / 6
    assert ce.item() == pytest.approx(ce_expected)
    assert mse.item() == pytest.approx(mse_expected)


def test_method_loss_and_softsign_codes():
    m = create_method("idhn", {}, bits=2, num_classes=3, num_train=3)
    z = torch.tensor([[1.0, 3.0], [-1.0, 0.0], [0.5, -2.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    loss, parts = m.loss({"z": z}, {"label": labels}, None)
    u = z / (1 + z.abs())
    assert parts["quantization"] == pytest.approx(idhn_quantization(u).item())
    assert idhn_quantization(torch.tensor([[0.5, -0.75]])).item() == pytest.approx((0.5 + 0.25) / 2)
    expected = parts["cross_entropy"] + 0.1 * parts["soft_mse"] + 0.1 * parts["quantization"]
    assert loss.item() == pytest.approx(expected)
    assert parts["soft_mse"] > 0


def test_single_label_data_reduces_to_the_hard_case():
    labels = torch.eye(4)[[0, 0, 1, 2, 3, 3]]
    s = soft_similarity(labels, labels)
    assert bool((hard_pairs(s) == 1).all())  # no soft pair at all
    u = torch.randn(6, 8).tanh()
    ce, mse = idhn_pair_losses(u, u, s, 5.0, 1 - torch.eye(6))
    assert mse.item() == 0.0 and ce.item() > 0


def test_recipe():
    cfg = build_config("idhn")
    assert cfg.method.params == {"alpha": 0.1, "beta": 5.0, "gamma": 0.1, "pairs": "batch"}


def test_training_on_single_label_data_lowers_the_loss(fmnist, quick_train):
    losses, _, _ = quick_train("idhn", fmnist, steps=12, **QUICK)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
