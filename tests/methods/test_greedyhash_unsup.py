"""Unsupervised GreedyHash: codes keep the cosine structure of fixed pretrained features; no labels."""

import pytest
import torch
import torch.nn.functional as F

from attnhash.methods.base import TrainContext, create_method
from attnhash.methods.greedyhash_unsup import cosine_structure_loss
from conftest import fmnist_batches

SMALL = dict(bits=32, image_size=32, model={"freeze": "layer3"}, optim={"lr": 1e-4})


class NoLabels(dict):
    """A batch that fails the test if anything asks for a label."""

    def __getitem__(self, key):
        assert key != "label", "an unsupervised method read a label"
        return super().__getitem__(key)

    def get(self, key, default=None):
        assert key != "label", "an unsupervised method read a label"
        return super().get(key, default)


def test_structure_loss_hand_checked():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])  # cosines: (1,2) 0, (1,3) and (2,3) 1/sqrt2
    b = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, -1.0]])  # cosines: (1,2) 1, (1,3) and (2,3) 0
    expected = (2 * 1.0 + 4 * 0.5) / 6  # off-diagonal ordered pairs: (0 - 1)^2 twice, (1/sqrt2 - 0)^2 four times
    assert cosine_structure_loss(f, b).item() == pytest.approx(expected, rel=1e-6)
    # an item without a target takes its pairs out: only (1, 2) and (2, 1) remain
    mask = torch.tensor([True, True, False])
    assert cosine_structure_loss(f, b, mask).item() == pytest.approx(1.0, rel=1e-6)
    assert cosine_structure_loss(f, f).item() == pytest.approx(0.0, abs=1e-7)


def test_training_lowers_the_loss_targets_stay_fixed_and_labels_are_never_read(fmnist, quick_train):
    losses, method, network = quick_train("greedyhash_unsup", fmnist, steps=12, **SMALL)
    assert not method.supervised
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3

    batches, _ = fmnist_batches(fmnist, 3, 24, SMALL["image_size"])
    batches = [NoLabels({k: v for k, v in b.items() if k != "label"}) for b in batches]
    ctx = TrainContext(network=network, forward=lambda b: network(b["input"]),
                       optimizer=torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=1e-2),
                       train_labels=None, num_train=72, epochs=1, device=torch.device("cpu"),
                       train_loader=batches, log=lambda m: None)
    fresh = create_method("greedyhash_unsup", {}, bits=32, num_classes=10, num_train=72)
    fresh.setup(ctx)  # the network's pooled features in eval mode, one unit row per item
    network.eval()
    with torch.no_grad():
        feats = torch.cat([network(b["input"])["features"] for b in batches])
    assert torch.allclose(fresh.targets, F.normalize(feats, dim=1), atol=1e-5) and fresh.has_target.all()
    before = fresh.targets.clone()
    network.train()
    parts = fresh.training_step(batches[0], ctx)  # NoLabels: reading a label fails the test
    network.eval()
    with torch.no_grad():
        moved = network(batches[0]["input"])["features"]
    assert not torch.allclose(moved, feats[:24])  # the network moved ...
    assert torch.equal(fresh.targets, before)  # ... the targets did not
    assert {"structure", "penalty"} <= set(parts)
