import pytest
import torch

from attnhash.config import build_config
from attnhash.errors import ConfigError
from attnhash.losses.pairwise import Partners
from attnhash.methods.base import create_method
from attnhash.methods.dsh import dsh_contrastive, dsh_regularizer, squared_distances

# Real batches on the pretrained EfficientNet-Lite0 with its stages up to block5 frozen: seconds on a CPU.
QUICK = dict(bits=16, backbone="efficientnet_lite0", image_size=32, model={"weights": "auto", "freeze": "block5"})


def _dsh(bits: int = 2, **params):
    return create_method("dsh", params, bits=bits, num_classes=3, num_train=10)


def test_margin_term_hand_computed():
    # K = 2, m = 2K = 4. Items 0 and 1 share a class, item 2 is another class.
    u = torch.tensor([[1.0, 1.0], [1.0, -1.0], [0.5, 0.0]])
    labels = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    # d01 = 0 + 4 = 4 (similar: 4/2 = 2); d02 = d12 = 0.25 + 1 = 1.25 (dissimilar, inside the margin:
    # (4 - 1.25)/2 = 1.375). Six ordered pairs of distinct items: (2*2 + 4*1.375)/6.
    contrastive = (2 * 2.0 + 4 * 1.375) / 6
    # | |u| - 1 | summed over bits: 0, 0, 0.5 + 1 -> mean over images 0.5; each pair carries both images'
    # regulariser, so the weight is 2 alpha.
    loss, parts = _dsh().loss({"z": u}, {"label": labels}, None)
    assert parts["contrastive"] == pytest.approx(contrastive)
    assert parts["regularizer"] == pytest.approx(0.5)
    assert loss.item() == pytest.approx(contrastive + 2 * 0.01 * 0.5)


def test_dissimilar_pairs_beyond_the_margin_cost_nothing():
    # K = 16, m = 32 on ||b_i - b_j||^2 = 4 d_H: a pair at Hamming distance 8 = K/2 sits on the margin
    a = torch.ones(1, 16)
    b_far = a.clone()
    b_far[0, :8] = -1  # d_H = 8 -> ||a - b||^2 = 32
    b_near = a.clone()
    b_near[0, :7] = -1  # d_H = 7 -> 28: (32 - 28)/2 = 2
    s = torch.zeros(1, 1)
    mask = torch.ones(1, 1)
    assert dsh_contrastive(a, b_far, s, 32.0, mask).item() == pytest.approx(0.0)
    assert dsh_contrastive(a, b_near, s, 32.0, mask).item() == pytest.approx(2.0)
    m = _dsh(bits=16)
    u = torch.cat([a, b_far]).requires_grad_(True)
    loss, parts = m.loss({"z": u}, {"label": torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])}, None)
    assert parts["contrastive"] == pytest.approx(0.0) and parts["regularizer"] == pytest.approx(0.0)
    loss.backward()
    assert u.grad.abs().max().item() == pytest.approx(0.0)  # binary, beyond the margin: nothing to learn


def test_similar_pairs_are_pulled_together():
    u = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    s = torch.ones(2, 2)
    loss = dsh_contrastive(u, u, s, 4.0, 1 - torch.eye(2))
    assert loss.item() == pytest.approx(0.5 * 5.0)
    loss.backward()
    # d/du_0 of the mean of two ordered pairs (1/2 d each, both live) = 2 (u_0 - u_1) / 2
    assert u.grad[0].tolist() == pytest.approx([1.0, 2.0])


def test_squared_distances_and_regularizer():
    u = torch.randn(5, 8)
    o = torch.randn(7, 8)
    assert torch.allclose(squared_distances(u, o), torch.cdist(u, o).pow(2), atol=1e-4)
    assert dsh_regularizer(torch.tensor([[0.0, 2.0], [1.0, -1.0]])).item() == pytest.approx((1 + 1 + 0 + 0) / 2)


def test_bank_pairs_compare_with_the_training_set():
    labels = torch.eye(3)[[0, 0, 1, 2]]
    partners = Partners("bank", num_train=4, bits=2, train_labels=labels)
    codes, other_labels, mask = partners(torch.ones(2, 2), labels[:2], torch.tensor([0, 1]))
    assert codes.shape == (4, 2) and other_labels.shape == (4, 3)
    assert mask.tolist() == [[1.0, 1.0, 0.0, 0.0]] * 2  # rows 2 and 3 not seen yet
    with pytest.raises(ConfigError):
        Partners("everything")


def test_recipe_holds_the_paper_values():
    cfg = build_config("dsh")
    assert cfg.method.params == {"alpha": 0.01, "margin": 2.0, "pairs": "batch"}


def test_training_lowers_the_loss(fmnist, quick_train):
    losses, method, _ = quick_train("dsh", fmnist, steps=12, **QUICK)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


def test_training_with_bank_pairs(fmnist, quick_train):
    losses, method, _ = quick_train("dsh", fmnist, steps=3, batch_size=16, params={"pairs": "bank"}, **QUICK)
    assert method.partners.bank is not None and bool(method.partners.bank.filled.any())
    assert all(torch.isfinite(torch.tensor(losses)))
