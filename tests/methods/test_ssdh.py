"""SSDH: similarity from the network's own features at setup, squared loss on the known pairs, no labels."""

import pytest
import torch

from attnhash.losses.similarity import ssdh_similarity
from attnhash.methods.base import TrainContext, create_method
from conftest import fmnist_batches

SMALL = dict(bits=32, image_size=32, model={"freeze": "layer4"}, n_batches=3, batch_size=24)


def test_ssdh_is_unsupervised_and_has_no_ablations():
    method = create_method("ssdh", {}, 32, num_classes=0, num_train=10)
    assert not method.supervised and method.ablations == {}


def test_setup_builds_s_from_the_networks_features_filled_by_index(fmnist):
    method = create_method("ssdh", {}, 32, num_classes=0, num_train=72)
    from attnhash.config import build_config

    cfg = build_config("ssdh", overrides=["model.backbone=resnet18", "model.weights=none", "model.bits=32"])
    network = method.build_network(cfg.model)
    batches, _ = fmnist_batches(fmnist, 3, 24, 32)
    # shuffle the order of items within the loader: features must land by "index", not by position
    perm = torch.randperm(72, generator=torch.Generator().manual_seed(1))
    images = torch.cat([b["input"] for b in batches])
    loader = [{"input": images[perm[s:s + 24]], "index": perm[s:s + 24], "start_stage": 0} for s in (0, 24, 48)]
    messages = []
    ctx = TrainContext(network=network, forward=lambda b: network(b["input"]), optimizer=None, train_labels=None,
                       num_train=72, epochs=1, device=torch.device("cpu"), train_loader=loader,
                       log=messages.append)
    network.train()
    method.setup(ctx)
    assert network.training  # the eval-mode pass restored the mode
    network.eval()
    with torch.no_grad():
        feats = network(images)["features"]
    expected, _ = ssdh_similarity(feats)
    assert torch.equal(method.pairs.s, expected)
    assert any("random weights" in m for m in messages) and any("peak" in m for m in messages)


def test_ssdh_loss_is_the_squared_error_on_known_pairs():
    method = create_method("ssdh", {}, 2, num_classes=0, num_train=3)
    from attnhash.losses.similarity import SimilarityPairs

    method.pairs = SimilarityPairs(torch.tensor([[1, -1, 0], [-1, 1, 0], [0, 0, 1]], dtype=torch.int8), 2)
    z = torch.full((3, 2), 20.0)  # tanh(z) ~ 1: <h_i, h_j>/K = 1 for every pair
    loss, parts = method.loss({"z": z}, {"index": torch.arange(3)}, None)
    # known pairs: 3 diagonal (error 0) and (0,1), (1,0) with S = -1 (error (1 - -1)^2 = 4)
    assert loss.item() == pytest.approx(8.0 / 5.0, rel=1e-5)
    assert parts["known_pairs"] == pytest.approx(5 / 9)


def test_ssdh_trains_on_fashion_mnist_and_lowers_its_loss(fmnist, quick_train):
    losses, method, _ = quick_train("ssdh", fmnist, steps=9, **SMALL)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    s = method.pairs.s
    assert torch.equal(s, s.t()) and (s == 1).any() and (s == -1).any()
