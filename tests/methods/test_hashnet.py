import math
from types import SimpleNamespace

import pytest
import torch

from attnhash.config import build_config
from attnhash.methods.base import create_method
from attnhash.methods.hashnet import HashNetParams, balance_weights, continuation_beta, weighted_likelihood

QUICK = dict(bits=16, backbone="efficientnet_lite0", image_size=32, model={"weights": "auto", "freeze": "block5"})


def test_weights_balance_similar_and_dissimilar_pairs():
    # 4 items, classes A A B C: 12 ordered pairs of distinct items, 2 similar (0-1, 1-0), 10 dissimilar.
    labels = torch.eye(3)[[0, 0, 1, 2]]
    s = (labels @ labels.t() > 0).float()
    mask = 1 - torch.eye(4)
    w = balance_weights(s, mask)
    assert w[0, 1].item() == pytest.approx(12 / 2) and w[1, 0].item() == pytest.approx(6.0)  # |S|/|S1|
    assert w[0, 2].item() == pytest.approx(12 / 10) and w[3, 2].item() == pytest.approx(1.2)  # |S|/|S0|
    assert torch.diagonal(w).abs().sum().item() == 0.0  # self pairs are not in S
    # each class of pairs carries the same total weight |S|
    assert (w * s).sum().item() == pytest.approx(12.0) and (w * (1 - s)).sum().item() == pytest.approx(12.0)


def test_continuous_similarity_scales_only_similar_pairs():
    s = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    mask = 1 - torch.eye(2)
    c = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    w = balance_weights(s, mask, c)
    assert w[0, 1].item() == pytest.approx(0.5 * 2 / 2)


def test_weighted_likelihood_hand_computed():
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    labels = torch.eye(2)[[0, 1, 0]]
    s = (labels @ labels.t() > 0).float()
    mask = 1 - torch.eye(3)
    w = balance_weights(s, mask)  # 6 pairs: 2 similar (0-2, 2-0) weight 3, 4 dissimilar weight 1.5
    alpha = 0.5
    # theta: <h0,h2> = 2 -> 1 (similar): log(1 + e) - 1; <h0,h1> = <h1,h2> = 0 -> 0 (dissimilar): log 2
    expected = (2 * 3 * (math.log(1 + math.e) - 1) + 4 * 1.5 * math.log(2)) / 6
    assert weighted_likelihood(h, h, s, w, alpha, mask).item() == pytest.approx(expected)
    # the weighted mean is the mean over similar pairs plus the mean over dissimilar pairs
    assert expected == pytest.approx((math.log(1 + math.e) - 1) + math.log(2))


def test_beta_schedule_of_the_reference():
    p = HashNetParams(continuation="steps")
    assert continuation_beta(0, 0, p) == 1.0
    assert continuation_beta(199, 0, p) == 1.0  # stage-wise: constant within a 200-iteration stage
    assert continuation_beta(200, 0, p) == pytest.approx(math.sqrt(2.0))
    assert continuation_beta(10000, 0, p) == pytest.approx(math.sqrt(51.0))


def test_progress_continuation_reaches_the_reference_beta_in_any_run_length():
    p = HashNetParams()  # continuation = progress
    for total in (150, 4000):
        betas = [continuation_beta(step, total, p) for step in range(total)]
        assert betas[0] == 1.0
        assert all(b2 >= b1 for b1, b2 in zip(betas, betas[1:]))
        assert betas[-1] == pytest.approx(math.sqrt(1 + 0.005 * 9800))  # last stage of the 10,000 iterations


def test_loss_uses_tanh_of_beta_z_and_beta_grows_with_ctx_step():
    m = create_method("hashnet", {}, bits=2, num_classes=2, num_train=4)
    assert m.alpha == pytest.approx(10 / 2)
    z = torch.tensor([[0.3, -0.2], [0.1, 0.4]])
    batch = {"label": torch.eye(2)}
    early = SimpleNamespace(step=0, epochs=2, steps_per_epoch=50)
    late = SimpleNamespace(step=99, epochs=2, steps_per_epoch=50)
    beta_late = m.beta(late)
    assert m.beta(early) == 1.0 and beta_late > 6.0
    loss, parts = m.loss({"z": z}, batch, late)
    h = torch.tanh(beta_late * z)
    theta = 5.0 * (h[0] @ h[1])  # one dissimilar pair each way
    assert parts["beta"] == beta_late
    assert loss.item() == pytest.approx(math.log1p(math.exp(theta.item())))


def test_recipe_holds_the_reference_values():
    p = build_config("hashnet").method.params
    assert (p["gamma"], p["power"], p["stage_steps"], p["alpha"]) == (0.005, 0.5, 200, None)


def test_training_lowers_the_loss_while_beta_grows(fmnist, quick_train):
    losses, method, _ = quick_train("hashnet", fmnist, steps=12, epochs=2, **QUICK)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    end = SimpleNamespace(step=12, epochs=2, steps_per_epoch=3)
    assert method.beta(end) > 1.0  # continuation used ctx.step: the 12 steps cover the whole schedule
