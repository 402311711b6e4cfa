"""UHGA: gradient attention that reweights the code gradients, trained by a look-ahead; no labels."""

import copy

import pytest
import torch

from attnhash.methods.base import TrainContext, create_method
from attnhash.methods.uhga import GradientAttention, balance_loss
from conftest import fmnist_batches

SMALL = dict(bits=32, image_size=32, model={"freeze": "layer4"}, n_batches=3, batch_size=24)
WITH_LAYER4 = dict(SMALL, model={"freeze": "layer3"})  # a trainable backbone stage, to watch its gradient


class NoLabels(dict):
    """A batch that fails the test if anything asks for a label."""

    def __getitem__(self, key):
        assert key != "label", "an unsupervised method read a label"
        return super().__getitem__(key)

    def get(self, key, default=None):
        assert key != "label", "an unsupervised method read a label"
        return super().get(key, default)


def unlabeled_batches(source):
    batches, _ = fmnist_batches(source, SMALL["n_batches"], SMALL["batch_size"], SMALL["image_size"])
    return [NoLabels({k: v for k, v in b.items() if k != "label"}) for b in batches]


def frozen_lr_context(network, batches):
    """A context whose optimiser does not move the network (lr 0): gradients can be compared on one state."""
    params = [p for p in network.parameters() if p.requires_grad]
    return TrainContext(network=network, forward=lambda b: network(b["input"], start_stage=0),
                        optimizer=torch.optim.SGD(params, lr=0.0), train_labels=None, num_train=72, epochs=1,
                        device=torch.device("cpu"), train_loader=batches, log=lambda m: None)


def test_attention_starts_at_one_and_stays_in_range():
    ga = GradientAttention(hidden=8)
    h, g = torch.rand(5, 16) * 2 - 1, torch.randn(5, 16)
    w_sim, w_reg = ga(h, g, -g)
    assert torch.equal(w_sim, torch.ones_like(w_sim)) and torch.equal(w_reg, torch.ones_like(w_reg))
    torch.nn.init.normal_(ga.net[-1].weight, std=50.0)
    w_sim, w_reg = ga(h, 100 * g, g)
    assert ((w_sim >= 0) & (w_sim <= 2)).all() and ((w_reg >= 0) & (w_reg <= 2)).all()
    assert balance_loss(torch.tensor([[1.0, 1.0], [-1.0, 1.0]])).item() == pytest.approx(0.5)


def test_attention_weights_change_the_gradient_that_reaches_the_network(fmnist, quick_train):
    # a livelier attention (lr 1e-2) so that a few steps give it per-bit differences to show
    _, method, network = quick_train("uhga", fmnist, steps=6, params={"attention_lr": 1e-2}, **WITH_LAYER4)
    batches = unlabeled_batches(fmnist)
    ctx = frozen_lr_context(network, batches)
    watched = {"hash": network.hash_layer[-1].weight, "backbone": network.backbone.layer4[1].conv2.weight}

    before = copy.deepcopy(method.grad_attention.state_dict())
    parts = method.training_step(batches[0], ctx)
    attended = {k: p.grad.clone() for k, p in watched.items()}
    # the attention MLP itself was updated by the look-ahead loss
    after = method.grad_attention.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert parts["w_sim"] != 1.0 and "lookahead" in parts

    method.ablate = {"gradient_attention"}  # the same method, same network state, plain gradients
    method.training_step(batches[0], ctx)
    plain = {k: p.grad.clone() for k, p in watched.items()}
    for k in watched:
        cos = torch.nn.functional.cosine_similarity(attended[k].flatten(), plain[k].flatten(), dim=0)
        # not merely rescaled: the attention reweights entries, so the direction changes
        assert cos < 0.99999, k
        assert (attended[k] - plain[k]).norm() > 1e-3 * plain[k].norm(), k

    # the ablation is ordinary backpropagation of the loss
    network.zero_grad(set_to_none=True)
    loss, _ = method.loss(network(batches[0]["input"]), batches[0], ctx)
    loss.backward()
    for k, p in watched.items():
        torch.testing.assert_close(p.grad, plain[k], rtol=1e-4, atol=1e-7)


def test_attention_net_is_not_in_the_network_optimizer():
    method = create_method("uhga", {}, 32, num_classes=0, num_train=10)
    network = method.build_network(method_config())
    ids = {id(p) for g in method.trainable_parameters(network) for p in g["params"]}
    assert ids and not ids & {id(p) for p in method.grad_attention.parameters()}
    ablated = create_method("uhga", {}, 32, num_classes=0, num_train=10, ablate=("gradient_attention",))
    assert ablated.grad_attention is None


def method_config():
    from attnhash.config import build_config

    return build_config("uhga", overrides=["model.backbone=resnet18", "model.weights=none", "model.bits=32"]).model


def test_uhga_trains_on_fashion_mnist_without_labels(fmnist, quick_train):
    losses, method, network = quick_train("uhga", fmnist, steps=12, **SMALL)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    # a few more steps on batches that refuse to hand out labels
    batches = unlabeled_batches(fmnist)
    ctx = frozen_lr_context(network, batches)
    ctx.optimizer = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=1e-3)
    method.setup(ctx)
    assert torch.isfinite(torch.tensor(method.training_step(batches[0], ctx)["loss"]))


def test_squared_loss_variant_and_bank_pairs_train(fmnist, quick_train):
    losses, method, _ = quick_train("uhga", fmnist, steps=6, params={"loss": "squared", "pairs": "bank"},
                                   **WITH_LAYER4)
    assert method.pairs.mode == "bank" and bool(method.pairs.filled.all())
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50", "alexnet", "efficientnet_lite0"])
def test_every_backbone_and_bit_length_builds_and_runs(backbone, shared_backbones):
    from attnhash.config import build_config

    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    for bits in (16, 32, 48, 64, 128):
        cfg = build_config("uhga", overrides=[f"model.backbone={backbone}", "model.weights=none", f"model.bits={bits}"])
        method = create_method("uhga", cfg.method.params, bits, num_classes=0, num_train=2)
        net = method.build_network(cfg.model).eval()
        with torch.no_grad():
            out = net(images)
        assert out["z"].shape == (2, bits) and torch.isfinite(out["z"]).all()
        assert method.grad_attention is not None  # per (item, bit): the same small MLP serves every K
