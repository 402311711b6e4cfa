"""Folding BatchNorm into convolutions for inference: the same network up to float rounding, on a copy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnhash.config import build_config
from attnhash.methods import create_method
from attnhash.models import inference_copy
from attnhash.models.attention import create_attention
from attnhash.models.backbones import create_backbone


def _randomise_bn(model: nn.Module) -> None:
    """Running statistics and affine parameters far from the identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name,kwargs,left", [
    ("efficientnet_lite0", {"output_stride": 16}, 0),
    ("resnet18", {}, 0),
    ("resnet50", {"output_stride": 16}, 0),
    # SimAM between conv2 and bn2 of every block: those bn2 are not foldable and stay (8 blocks)
    ("resnet18", {"block_attention": lambda c: create_attention("simam", c)}, 8),
])
def test_folded_backbone_computes_the_same_function(name, kwargs, left):
    torch.manual_seed(0)
    backbone = create_backbone(name, weights="none", **kwargs)
    _randomise_bn(backbone)
    backbone.eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = backbone.forward_features(x)
        folded = inference_copy(backbone)
        got = folded.forward_features(x)
        again = backbone.forward_features(x)
    assert _batchnorms(folded) == left
    assert _batchnorms(backbone) > left  # the original keeps its layers and state dict
    torch.testing.assert_close(again, expected, rtol=0, atol=0)
    # float rounding only: the random statistics make activations up to ~1e6 deep in ResNet50, so relative
    assert float((got - expected).norm() / expected.norm()) < 1e-5


def test_folding_needs_eval_mode():
    backbone = create_backbone("resnet18", weights="none").train()
    with pytest.raises(RuntimeError, match="eval mode"):
        backbone.fold_batchnorm()


def test_folded_hashing_network_starts_at_a_cached_stage():
    """The Encoder runs the folded copy from the stage cache's boundary: the stages must still split there."""
    cfg = build_config("dpfah", overrides=["model.bits=32", "data.image_size=64", "model.output_stride=16",
                                           "model.weights=none"])
    network = create_method("dpfah", cfg.method.params, 32, num_classes=10, num_train=0).network_spec(
        cfg.model).build().eval()
    _randomise_bn(network)
    folded = inference_copy(network)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        prefix = x
        for stage in network.backbone.stages()[:5]:
            prefix = stage(prefix)
        whole = network(x)["z"]
        torch.testing.assert_close(folded(prefix, start_stage=5)["z"], whole, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(folded(x)["z"], whole, rtol=1e-4, atol=1e-4)
