"""SimAM (DPFAH's parameter-free attention): closed form, no parameters, in-block placement."""

import math

import numpy as np
import pytest
import torch

from attnhash.config import ModelConfig
from attnhash.models.attention import create_attention
from attnhash.models.backbones import create_backbone
from attnhash.models.network import build_network


def closed_form_weights(x: np.ndarray, lam: float = 1e-4) -> np.ndarray:
    """SimAM's weights written out neuron by neuron in float64: the minimal energy of each neuron t of a
    channel, e_t = 4 (sigma^2 + lambda) / ((t - mu)^2 + 2 sigma^2 + 2 lambda), sigma^2 over n = H*W - 1,
    and the weight sigmoid(1 / e_t) (1/e_t is the module's (t - mu)^2 / (4 (sigma^2 + lambda)) + 1/2)."""
    b, c, h, w = x.shape
    out = np.empty_like(x, dtype=np.float64)
    for i in range(b):
        for j in range(c):
            ch = x[i, j].astype(np.float64)
            mu = ch.mean()
            sigma2 = ((ch - mu) ** 2).sum() / (h * w - 1)
            for y in range(h):
                for z in range(w):
                    t = ch[y, z]
                    energy = 4 * (sigma2 + lam) / ((t - mu) ** 2 + 2 * sigma2 + 2 * lam)
                    out[i, j, y, z] = 1 / (1 + math.exp(-1 / energy))
    return out


def closed_form(x: np.ndarray, lam: float = 1e-4) -> np.ndarray:
    return x.astype(np.float64) * closed_form_weights(x, lam)


def test_simam_matches_the_closed_form():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5) * 3 + 1
    expected = closed_form(x.numpy())
    got = create_attention("simam", 3)(x)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_residual_form_adds_the_attended_map_to_its_input():
    torch.manual_seed(1)
    x = torch.randn(2, 4, 3, 3)
    expected = x.numpy() + closed_form(x.numpy())
    got = create_attention("simam_residual", 4)(x)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_lambda_is_an_argument():
    x = torch.randn(1, 2, 3, 3)
    got = create_attention("simam", 2, lam=0.5)(x)
    np.testing.assert_allclose(got.numpy(), closed_form(x.numpy(), 0.5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["simam", "simam_residual"])
def test_no_parameters_and_no_state(name):
    m = create_attention(name, 512)
    assert sum(p.numel() for p in m.parameters()) == 0
    assert m.state_dict() == {}


@pytest.mark.parametrize("name, factor", [("simam", 1.0), ("simam_residual", 2.0)])
def test_one_by_one_map_is_finite(name, factor):
    # n = H*W - 1 = 0: the deviation d is 0 too, so E = 1/2 (no 0/0)
    x = torch.randn(3, 5, 1, 1)
    y = create_attention(name, 5)(x)
    assert torch.isfinite(y).all()
    expected = x * (factor - 1 + torch.sigmoid(torch.tensor(0.5)))
    torch.testing.assert_close(y, expected)


def test_last_map_is_the_channel_mean_of_the_weights():
    torch.manual_seed(2)
    x = torch.randn(2, 6, 4, 4, requires_grad=True)
    m = create_attention("simam", 6)
    y = m(x)
    weights = torch.from_numpy(closed_form_weights(x.detach().numpy()))
    assert m.last_map.shape == (2, 4, 4) and not m.last_map.requires_grad
    torch.testing.assert_close(m.last_map.double(), weights.mean(dim=1), rtol=1e-4, atol=1e-5)
    y.sum().backward()  # gradients flow through the closed form
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_channels_last_input_gives_the_same_result():
    x = torch.randn(2, 8, 4, 4)
    m = create_attention("simam_residual", 8)
    torch.testing.assert_close(m(x.contiguous(memory_format=torch.channels_last)), m(x))


def test_in_block_simam_keeps_the_resnet_state_dict_and_acts():
    plain = create_backbone("resnet18", weights="none")
    with_simam = create_backbone("resnet18", weights="none",
                                 block_attention=lambda c: create_attention("simam", c))
    assert list(with_simam.state_dict()) == list(plain.state_dict())
    assert sum(p.numel() for p in with_simam.parameters()) == sum(p.numel() for p in plain.parameters())
    n_simam = sum(type(m).__name__ == "SimAM" for m in with_simam.modules())
    assert n_simam == 8  # one per BasicBlock of ResNet18
    # torchvision-format weights load unchanged, and the attention changes the features
    with_simam.load_state_dict(plain.state_dict())
    plain.eval()
    with_simam.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(with_simam.forward_features(x), plain.forward_features(x))


def test_network_placements():
    blocks = build_network(ModelConfig(backbone="resnet18", weights="none", bits=16, attention="simam",
                                       attention_placement="blocks"))
    assert blocks.attention is None
    assert sum(type(m).__name__ == "SimAM" for m in blocks.modules()) == 8
    output = build_network(ModelConfig(backbone="resnet18", weights="none", bits=16, attention="simam_residual"))
    assert type(output.attention).__name__ == "SimAM" and output.attention.residual
    output.eval()
    out = output(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert out["z"].shape == (2, 16) and output.attention.last_map.shape == (2, 2, 2)


@pytest.mark.parametrize("backbone, conv, norm", [("resnet18", "conv2", "bn2"), ("resnet50", "conv2", "bn2")])
def test_in_block_attention_sits_between_conv2_and_bn2(backbone, conv, norm):
    # The SimAM reference wraps the block's conv2 as (conv2, SimAM), so SimAM reads conv2's raw output and bn2
    # reads SimAM's (in a Bottleneck too: conv2 is its 3x3 convolution, of `width` channels).
    net = create_backbone(backbone, weights="none", block_attention=lambda c: create_attention("simam", c))
    block = net.layer1[0]
    seen = {}
    block.get_submodule(conv).register_forward_hook(lambda m, i, o: seen.__setitem__("conv", o.detach().clone()))
    block.attention.register_forward_hook(
        lambda m, i, o: seen.update(attention_in=i[0].detach().clone(), attention_out=o.detach().clone()))
    block.get_submodule(norm).register_forward_hook(lambda m, i, o: seen.__setitem__("norm_in", i[0].detach().clone()))
    net.eval()
    with torch.no_grad():
        net.forward_features(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(seen["attention_in"], seen["conv"])
    torch.testing.assert_close(seen["norm_in"], seen["attention_out"])
