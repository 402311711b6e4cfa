"""UHGA: gradient attention (per pair: which code of a pair moves; per item: weights of the loss parts),
trained by a look-ahead; no labels."""

import copy

import pytest
import torch

from attnhash.errors import ConfigError
from attnhash.methods.base import TrainContext, create_method
from attnhash.methods.uhga import ItemGradientAttention, PairGradientAttention, balance_loss
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


def test_item_attention_starts_at_one_and_stays_in_range():
    ga = ItemGradientAttention(hidden=8)
    h, g = torch.rand(5, 16) * 2 - 1, torch.randn(5, 16)
    w_sim, w_reg = ga(h, g, -g)
    assert torch.equal(w_sim, torch.ones_like(w_sim)) and torch.equal(w_reg, torch.ones_like(w_reg))
    torch.nn.init.normal_(ga.net[-1].weight, std=50.0)
    w_sim, w_reg = ga(h, 100 * g, g)
    assert ((w_sim >= 0) & (w_sim <= 2)).all() and ((w_reg >= 0) & (w_reg <= 2)).all()
    assert balance_loss(torch.tensor([[1.0, 1.0], [-1.0, 1.0]])).item() == pytest.approx(0.5)


def test_pair_attention_is_a_softmax_over_the_two_codes_of_a_pair():
    ga = PairGradientAttention(hidden=8)
    own, partner = torch.randn(7, 16, 3), torch.randn(7, 16, 3)
    assert torch.equal(ga(own, partner), torch.full((7, 16), 0.5))  # starts as plain gradient descent
    torch.nn.init.normal_(ga.score[-1].weight, std=0.5)
    a = ga(own, partner)
    assert ((a >= 0) & (a <= 1)).all() and (a - 0.5).abs().max() > 0.05
    torch.testing.assert_close(ga(partner, own), 1.0 - a)  # the two shares of a pair sum to 1


def make_uhga(params=None, bits=8):
    from attnhash.losses.similarity import SimilarityPairs

    method = create_method("uhga", params or {}, bits, num_classes=0, num_train=4)
    s = torch.tensor([[1, 1, -1, 0], [1, 1, -1, -1], [-1, -1, 1, 1], [0, -1, 1, 1]], dtype=torch.int8)
    method.pairs = SimilarityPairs(s, bits, "batch")
    return method


@pytest.mark.parametrize("loss", ["likelihood", "squared"])
def test_pair_gradients_split_the_batch_gradient_exactly(loss):
    # per known pair {i, j}: G_ij = c_ij h_j on h_i; their sum (with the item's own term) is dL_sim/dh, so at
    # the initial a = 1/2 the attended gradient is exactly the plain one
    torch.manual_seed(0)
    method = make_uhga({"loss": loss})
    code = torch.tanh(torch.randn(4, 8))
    _, s, mask = method.pairs.targets(torch.arange(4), code)
    g_att, g_plain, _, penalty, _ = method._pair_attention(code, s, mask)
    leaf = code.clone().requires_grad_(True)
    sim, quant, bal = method._parts(leaf, leaf, s, mask)
    expected = torch.autograd.grad(sim + method.params.reg_weight * (quant + bal), leaf)[0]
    torch.testing.assert_close(g_plain, expected)
    torch.testing.assert_close(g_att, expected)
    assert penalty.item() == 0.0
    if loss == "likelihood":
        # pair {0, 2} (dissimilar) sends Huang et al.'s (sigma(theta) - s) h_j / 2 to h_0, once for (0, 2) and
        # once for (2, 0) of the mean over the known ordered pairs
        theta = 0.5 * (code[0] @ code[2])
        expected_share = 2 * (torch.sigmoid(theta) - 0.0) * code[2] / 2 / mask.sum()
        inner = (code @ code.t()).requires_grad_(True)
        c = torch.autograd.grad(method._similarity_of_inner(inner, s, mask), inner)[0]
        torch.testing.assert_close((c[0, 2] + c[2, 0]) * code[2], expected_share)


class TakeAll(torch.nn.Module):
    """An attention that gives every pair's whole step to the pair's first code (a = 1)."""

    def forward(self, own, partner):
        return torch.ones(own.shape[:2])


def test_a_share_of_one_moves_only_the_first_code_of_the_pair():
    torch.manual_seed(1)
    method = make_uhga({"reg_weight": 0.0})
    s = torch.tensor([[1, 1], [1, 1]], dtype=torch.int8)
    from attnhash.losses.similarity import SimilarityPairs

    method.pairs = SimilarityPairs(s, 8, "batch")
    method.grad_attention = TakeAll()
    code = torch.tanh(torch.randn(2, 8))
    _, s2, mask = method.pairs.targets(torch.arange(2), code)
    g_att, g_plain, _, _, _ = method._pair_attention(code, s2, mask)
    inner = (code @ code.t()).requires_grad_(True)
    c = torch.autograd.grad(method._similarity_of_inner(inner, s2, mask), inner)[0]
    own = 2 * c.diagonal().unsqueeze(1) * code  # d(C_ii <h_i, h_i>)/dh_i: an item's pair with itself (S counts it)
    # item 0 takes its pair's step twice; item 1 only its own term: it stays put with respect to the pair
    torch.testing.assert_close(g_att[1], own[1])
    torch.testing.assert_close(g_att[0] - own[0], 2 * (g_plain[0] - own[0]))


def test_pair_attention_needs_in_batch_pairs():
    with pytest.raises(ConfigError, match="pairs=batch"):
        create_method("uhga", {"pairs": "bank"}, 16, num_classes=0, num_train=4)
    create_method("uhga", {"pairs": "bank", "attention": "item"}, 16, num_classes=0, num_train=4)
    create_method("uhga", {"pairs": "bank"}, 16, num_classes=0, num_train=4, ablate=("gradient_attention",))
    with pytest.raises(ConfigError, match="attention"):
        create_method("uhga", {"attention": "both"}, 16, num_classes=0, num_train=4)


@pytest.mark.parametrize("form, shown", [("pair", "pair_share_spread"), ("item", "w_sim")])
def test_attention_weights_change_the_gradient_that_reaches_the_network(fmnist, quick_train, form, shown):
    # a livelier attention (lr 1e-2) so that a few steps give it per-bit differences to show
    _, method, network = quick_train("uhga", fmnist, steps=6, params={"attention_lr": 1e-2, "attention": form},
                                     **WITH_LAYER4)
    batches = unlabeled_batches(fmnist)
    ctx = frozen_lr_context(network, batches)
    watched = {"hash": network.hash_layer[-1].weight, "backbone": network.backbone.layer4[1].conv2.weight}

    before = copy.deepcopy(method.grad_attention.state_dict())
    parts = method.training_step(batches[0], ctx)
    attended = {k: p.grad.clone() for k, p in watched.items()}
    # the attention MLP itself was updated by the look-ahead loss
    after = method.grad_attention.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert parts[shown] not in (0.0, 1.0) and "lookahead" in parts

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
    losses, method, _ = quick_train("uhga", fmnist, steps=6,
                                    params={"loss": "squared", "pairs": "bank", "attention": "item"}, **WITH_LAYER4)
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
