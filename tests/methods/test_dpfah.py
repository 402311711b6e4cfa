"""DPFAH (seed 000): loss on hand-checked cases, network shape, ablations, every backbone x bits, training."""

import json
import math

import pytest
import torch

from attnhash.config import build_config
from attnhash.errors import ConfigError
from attnhash.methods.base import create_method
from attnhash.models import network_from_spec
from conftest import setup_context

BACKBONES = ["resnet18", "resnet34", "resnet50", "alexnet", "efficientnet_lite0"]
BITS = [16, 32, 48, 64, 128]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def make(bits=2, num_classes=2, ablate=(), **params):
    return create_method("dpfah", params, bits, num_classes=num_classes, num_train=2, ablate=ablate)


def hand_case():
    u = torch.tensor([[0.5, -0.5], [0.5, 0.5]])
    out = {"z": torch.atanh(u), "logits": torch.tensor([[2.0, 0.0], [1.0, 1.0]])}
    # theta = <u_i, u_j>/2 = [[0.25, 0], [0, 0.25]]
    return out


def test_loss_single_label_hand_computed():
    out = hand_case()
    batch = {"label": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "index": torch.arange(2)}
    loss, parts = make().loss(out, batch, None)
    likelihood = (2 * (softplus(0.25) - 0.25) + 2 * math.log(2)) / 4
    quant = 0.25  # |u| = 0.5 everywhere
    ce = (softplus(-2.0) + math.log(2)) / 2
    assert parts["likelihood"] == pytest.approx(likelihood, rel=1e-6)
    assert parts["quantization"] == pytest.approx(quant, rel=1e-6)
    assert parts["classification"] == pytest.approx(ce, rel=1e-6)
    assert loss.item() == pytest.approx(likelihood + 0.1 * quant + 10 * ce, rel=1e-6)


def test_loss_multi_label_uses_bce():
    out = hand_case()
    batch = {"label": torch.tensor([[1.0, 1.0], [0.0, 1.0]]), "index": torch.arange(2)}  # all pairs similar
    loss, parts = make(alpha=0.5, beta=2.0).loss(out, batch, None)
    likelihood = (2 * (softplus(0.25) - 0.25) + 2 * math.log(2)) / 4
    bce = (softplus(-2.0) + softplus(0.0) + softplus(1.0) + softplus(-1.0)) / 4
    assert parts["classification"] == pytest.approx(bce, rel=1e-6)
    assert loss.item() == pytest.approx(likelihood + 0.5 * 0.25 + 2.0 * bce, rel=1e-6)


def test_ablations_remove_their_terms():
    out = hand_case()
    batch = {"label": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "index": torch.arange(2)}
    full, _ = make().loss(out, batch, None)
    loss, parts = make(ablate=("regularizer",)).loss(out, batch, None)
    assert "quantization" not in parts and loss.item() == pytest.approx(full.item() - 0.1 * 0.25, rel=1e-6)
    loss, parts = make(ablate=("classifier",)).loss({"z": out["z"]}, batch, None)
    assert "classification" not in parts
    assert loss.item() == pytest.approx(parts["likelihood"] + 0.1 * parts["quantization"], rel=1e-6)
    with pytest.raises(ConfigError):
        make(ablate=("ida",))


def test_setup_reads_label_type_and_fills_the_bank():
    method = make(bits=2, num_classes=3)
    labels = torch.eye(3)[[0, 1, 2, 0]]
    method.setup(setup_context(4, labels))
    assert method.single_label is True
    out = {"z": torch.tensor([[0.3, -0.2]]), "logits": torch.zeros(1, 3)}
    method.loss(out, {"label": labels[:1], "index": torch.tensor([2])}, None)
    torch.testing.assert_close(method.bank.codes[2], torch.tanh(out["z"][0]))  # the bank keeps u = tanh(z)
    multi = make(bits=2, num_classes=3)
    multi.setup(setup_context(2, torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])))
    assert multi.single_label is False
    forced = make(bits=2, num_classes=3, classification="bce")
    forced.setup(setup_context(4, labels))
    assert forced.single_label is False


def model_cfg(backbone="resnet18", bits=16, extra=()):
    return build_config("dpfah", overrides=[f"model.backbone={backbone}", "model.weights=none",
                                            f"model.bits={bits}", *extra]).model


def test_recipe_and_default_network():
    cfg = build_config("dpfah")
    assert cfg.model.attention == "simam_residual" and cfg.model.attention_placement == "output"
    assert cfg.method.params == {"alpha": 0.1, "beta": 10.0, "scale": 0.5}
    net = make(bits=16, num_classes=10).build_network(model_cfg())
    assert type(net.attention).__name__ == "SimAM" and net.attention.residual
    assert net.classifier is not None and net.classifier.out_features == 10


def test_network_ablations_and_in_block_placement():
    assert make(bits=16, num_classes=10, ablate=("attention",)).build_network(model_cfg()).attention is None
    assert make(bits=16, num_classes=10, ablate=("classifier",)).build_network(model_cfg()).classifier is None
    blocks = make(bits=16, num_classes=10).build_network(
        model_cfg(extra=("model.attention=simam", "model.attention_placement=blocks")))
    assert blocks.attention is None and sum(type(m).__name__ == "SimAM" for m in blocks.modules()) == 8
    no_pfa = make(bits=16, num_classes=10, ablate=("attention",)).build_network(
        model_cfg(extra=("model.attention=simam", "model.attention_placement=blocks")))
    assert not any(type(m).__name__ == "SimAM" for m in no_pfa.modules())


@pytest.mark.parametrize("ablate", [(), ("classifier",), ("attention", "regularizer")])
def test_encoder_rebuilds_the_same_network(ablate):
    cfg = build_config("dpfah", overrides=["model.backbone=resnet18", "model.weights=none", "model.bits=32"])
    cfg.method.ablate = list(ablate)
    method = make(bits=32, num_classes=10, ablate=ablate)
    trained = method.build_network(cfg.model)
    # what the encoder does: the spec saved as JSON in the checkpoint, then the network from it alone
    rebuilt = network_from_spec(json.loads(json.dumps(method.network_spec(cfg.model).to_dict())))
    assert list(rebuilt.state_dict()) == list(trained.state_dict())


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_and_bit_length_builds_and_runs(backbone, shared_backbones):
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    for bits in BITS:
        net = make(bits=bits, num_classes=10).build_network(model_cfg(backbone, bits)).eval()
        with torch.no_grad():
            out = net(images)
        assert out["z"].shape == (2, bits) and out["logits"].shape == (2, 10)
        assert torch.isfinite(out["z"]).all()
        assert net.attention.last_map.shape == (2, *out["fmap"].shape[-2:])


def test_training_lowers_the_loss(fmnist, quick_train):
    # pretrained EfficientNet-Lite0 frozen up to block5: fast, and the features are real
    losses, method, network = quick_train("dpfah", fmnist, steps=10, batch_size=16, backbone="efficientnet_lite0",
                                          model={"weights": "auto", "freeze": "block5"})
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert method.single_label is True
