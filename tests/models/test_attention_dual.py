"""Dual attention: DHIDA's IDA against DANet, the column statistic, identity at initialisation."""

import pytest
import torch

from attnhash.models.attention import create_attention
from attnhash.models.attention.dual import (
    danet_channel_attention,
    danet_position_attention,
    ida_attention,
    ida_attention_from,
)


def literal_dual(module, a: torch.Tensor, improved: bool) -> torch.Tensor:
    """The two branches written from seed 002 section 3.3 and DANet, in float64 with einsum."""
    a = a.double()
    b, c, h, w = a.shape
    n = h * w

    def conv(layer):
        weight = layer.weight.detach().double()[:, :, 0, 0]
        return torch.einsum("oc,bcn->bon", weight, a.reshape(b, c, n)) + layer.bias.detach().double()[None, :, None]

    bq, cq, d = conv(module.query), conv(module.key), conv(module.value)
    m = torch.einsum("bci,bcj->bij", bq, cq)  # M = B^T C'
    if improved:  # eq. 3: (max + mean)/2 of each column (over i) minus M, softmax along each row
        m_t = (m.max(dim=1, keepdim=True).values + m.mean(dim=1, keepdim=True)) / 2 - m
    else:
        m_t = m
    p = torch.softmax(m_t, dim=2)
    position = torch.einsum("bcj,bij->bci", d, p)

    a1 = a.reshape(b, c, n)
    nm = torch.einsum("bin,bjn->bij", a1, a1)  # A1 A1^T
    if improved:  # eq. 6
        n_t = (nm.max(dim=1, keepdim=True).values + nm.mean(dim=1, keepdim=True)) / 2 - nm
    else:  # DANet: row max minus energy
        n_t = nm.max(dim=2, keepdim=True).values - nm
    x = torch.softmax(n_t, dim=2)
    channel = torch.einsum("bij,bjn->bin", x, a1)
    alpha, beta = module.alpha.item(), module.beta.item()
    e_p = alpha * position + a1
    e_c = beta * channel + a1
    return ((e_p + e_c) / 2).reshape(b, c, h, w)


def pair(channels=16, seed=0):
    """An IDA and a DANet module with identical weights."""
    torch.manual_seed(seed)
    ida = create_attention("ida", channels)
    danet = create_attention("danet", channels)
    danet.load_state_dict(ida.state_dict())
    return ida, danet


@pytest.mark.parametrize("name", ["ida", "danet"])
def test_identity_at_initialisation(name):
    torch.manual_seed(0)
    m = create_attention(name, 32)
    assert m.alpha.item() == 0.0 and m.beta.item() == 0.0
    a = torch.randn(3, 32, 4, 4)
    assert torch.equal(m(a), a)
    literal_sum = create_attention(name, 32, fusion="sum")
    assert torch.equal(literal_sum(a), 2 * a)  # the paper's plain sum of E_p and E_c


def test_query_and_key_reduce_to_an_eighth_and_both_modules_share_parameters():
    ida, danet = pair(64)
    assert ida.query.out_channels == ida.key.out_channels == 8 and ida.value.out_channels == 64
    assert list(ida.state_dict()) == list(danet.state_dict())


@pytest.mark.parametrize("improved", [True, False])
def test_module_matches_the_literal_equations(improved):
    ida, danet = pair(16, seed=3)
    m = ida if improved else danet
    with torch.no_grad():
        m.alpha.fill_(0.7)
        m.beta.fill_(-0.4)
    a = torch.randn(2, 16, 3, 4).relu()  # post-ReLU features, as after a backbone stage
    torch.testing.assert_close(m.double()(a.double()), literal_dual(m, a, improved), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scales", [(0.5, 0.0), (0.0, 0.5)], ids=["position", "channel"])
def test_ida_differs_from_danet_in_each_branch(scales):
    ida, danet = pair(16, seed=4)
    with torch.no_grad():
        for m in (ida, danet):
            m.alpha.fill_(scales[0])
            m.beta.fill_(scales[1])
    a = torch.randn(2, 16, 4, 4)
    diff = (ida(a) - danet(a)).abs().max()
    assert diff > 1e-2


def test_a_row_statistic_would_cancel_and_the_column_statistic_does_not():
    torch.manual_seed(5)
    energy = torch.randn(4, 9, 9, dtype=torch.float64)
    energy = energy @ energy.transpose(1, 2)  # symmetric, like the channel energy A1 A1^T
    row_stat = (energy.amax(dim=-1, keepdim=True) + energy.mean(dim=-1, keepdim=True)) / 2
    per_row = torch.softmax(row_stat - energy, dim=-1)
    danet = danet_channel_attention(energy)
    torch.testing.assert_close(per_row, danet)  # a statistic along the softmax axis does nothing
    torch.testing.assert_close(danet, torch.softmax(-energy, dim=-1))
    ida = ida_attention(energy)
    assert (ida - danet).abs().max() > 1e-2
    # and the column statistic is a per-column shift: the log-ratio of two columns moves by its difference
    col = (energy.amax(dim=-2) + energy.mean(dim=-2)) / 2  # (B, n)
    log_ratio_shift = (ida.log() - danet.log())[:, :, 0] - (ida.log() - danet.log())[:, :, 1]
    torch.testing.assert_close(log_ratio_shift, (col[:, 0] - col[:, 1]).unsqueeze(1).expand(-1, 9))


@pytest.mark.parametrize("symmetric", [False, True])
def test_fast_path_equals_the_reference_map_with_gradients(symmetric):
    torch.manual_seed(6)
    left = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    right = left if symmetric else torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 7, 7, dtype=torch.float64)
    ref = ida_attention(left @ right.transpose(1, 2))
    fast = ida_attention_from(left, right, symmetric=symmetric)
    torch.testing.assert_close(fast, ref)
    inputs = (left,) if symmetric else (left, right)
    g_ref = torch.autograd.grad((ref * weights).sum(), inputs)
    g_fast = torch.autograd.grad((fast * weights).sum(), inputs)
    for x, y in zip(g_fast, g_ref):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("name", ["ida", "danet"])
def test_channel_branch_one_image_at_a_time_equals_the_batched_map_with_gradients(name):
    torch.manual_seed(8)
    m = create_attention(name, 12).double()
    a1 = torch.randn(3, 12, 6, dtype=torch.float64).relu().requires_grad_(True)
    weights = torch.randn(3, 12, 6, dtype=torch.float64)
    batched = torch.bmm(m.channel_attention(a1), a1)
    (g_batched,) = torch.autograd.grad((batched * weights).sum(), a1)
    per_image = m.channel_output(a1)  # checkpointed: the maps are recomputed in backward
    (g_per_image,) = torch.autograd.grad((per_image * weights).sum(), a1)
    torch.testing.assert_close(per_image, batched, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_per_image, g_batched, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(m.channel_output(a1), batched, rtol=1e-12, atol=1e-12)


def test_danet_position_is_a_plain_row_softmax():
    energy = torch.randn(2, 5, 5)
    p = danet_position_attention(energy)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 5))
    torch.testing.assert_close(p, torch.exp(energy) / torch.exp(energy).sum(-1, keepdim=True))


def test_scales_get_gradients_at_initialisation():
    torch.manual_seed(7)
    m = create_attention("ida", 16)
    a = torch.randn(2, 16, 3, 3, requires_grad=True)
    (m(a) * torch.randn(2, 16, 3, 3)).sum().backward()
    assert m.alpha.grad.abs() > 0 and m.beta.grad.abs() > 0
    assert a.grad is not None and torch.isfinite(a.grad).all()


@pytest.mark.parametrize("name", ["ida", "danet"])
def test_last_map_and_odd_shapes(name):
    m = create_attention(name, 8)
    with torch.no_grad():
        m.alpha.fill_(0.3)
        m.beta.fill_(0.3)
    a = torch.randn(2, 8, 3, 5)
    y = m(a)
    assert m.last_map.shape == (2, 3, 5) and not m.last_map.requires_grad
    torch.testing.assert_close(m.last_map.sum(dim=(1, 2)), torch.ones(2))  # attention received, averaged
    torch.testing.assert_close(m(a.contiguous(memory_format=torch.channels_last)), y)
    one = m(torch.randn(2, 8, 1, 1))  # a 1x1 map (AlexNet at 64 px)
    assert one.shape == (2, 8, 1, 1) and torch.isfinite(one).all()


@pytest.mark.parametrize("name", ["ida", "danet"])
def test_width_adds_the_papers_input_convolution(name):
    torch.manual_seed(0)
    m = create_attention(name, 48, width=16)
    assert m.out_channels == 16 and m.input[0].in_channels == 48 and m.query.out_channels == 2
    x = torch.randn(2, 48, 3, 3)
    a = m.input(x)
    torch.testing.assert_close(m(x), a)  # scales 0: the module passes A on unchanged
    with torch.no_grad():
        m.alpha.fill_(0.5)
        m.beta.fill_(0.5)
    torch.testing.assert_close(m(x), literal_dual(m, a, improved=name == "ida").float(), rtol=1e-4, atol=1e-5)
    assert create_attention(name, 48).input is None
