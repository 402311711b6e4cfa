"""DHIDA (seed 002): f(u), loss on hand-checked cases, eq. 16, ablations, every backbone x bits, training."""

import json
import math

import pytest
import torch

from attnhash.config import build_config
from attnhash.errors import ConfigError
from attnhash.methods.base import create_method
from attnhash.methods.dhida import balance_loss, piecewise
from attnhash.models import network_from_spec
from conftest import setup_context

BACKBONES = ["resnet18", "resnet34", "resnet50", "alexnet", "efficientnet_lite0"]
BITS = [16, 32, 48, 64, 128]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def make(bits=2, ablate=(), **params):
    return create_method("dhida", params, bits, num_classes=2, num_train=2, ablate=ablate)


SINGLE = {"label": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "index": torch.arange(2)}


def test_piecewise_function_is_eq_1():
    u = torch.tensor([-3.0, -1.0, -0.4, 0.0, 0.7, 1.0, 2.5])
    assert piecewise(u).tolist() == pytest.approx([-1.0, -1.0, -0.4, 0.0, 0.7, 1.0, 1.0])
    # sign(f(u)) = sign(u): f cannot change a code, so it must act on the loss (see dhida.py)
    assert torch.equal(torch.sign(piecewise(u)), torch.sign(u))


def test_balance_loss_is_eq_12():
    v = torch.tensor([[1.0, -0.5, 0.2], [0.5, 0.5, 0.2]])
    assert balance_loss(v).item() == pytest.approx(0.75**2 + 0.0 + 0.2**2)


def test_loss_hand_computed_on_the_clipped_output():
    z = torch.tensor([[2.0, -0.5], [0.5, 0.5]])  # f(z) = [[1, -0.5], [0.5, 0.5]]
    loss, parts = make().loss({"z": z}, SINGLE, None)
    # theta = <v_i, v_j>/2 = [[0.625, 0.125], [0.125, 0.25]], s = identity
    l1 = (softplus(0.625) - 0.625 + 2 * softplus(0.125) + softplus(0.25) - 0.25) / 4
    l2 = 0.75**2  # bit means [0.75, 0]
    assert parts["likelihood"] == pytest.approx(l1, rel=1e-6)
    assert parts["balance"] == pytest.approx(l2, rel=1e-6)
    assert loss.item() == pytest.approx(l1 + 0.1 * l2, rel=1e-6)


def test_piecewise_ablation_and_eq_11_scale():
    z = torch.tensor([[2.0, -0.5], [0.5, 0.5]])
    loss, parts = make(ablate=("piecewise",)).loss({"z": z}, SINGLE, None)
    # raw u: theta = [[2.125, 0.375], [0.375, 0.25]], bit means [1.25, 0]
    l1 = (softplus(2.125) - 2.125 + 2 * softplus(0.375) + softplus(0.25) - 0.25) / 4
    assert parts["likelihood"] == pytest.approx(l1, rel=1e-6)
    assert loss.item() == pytest.approx(l1 + 0.1 * 1.25**2, rel=1e-6)
    _, parts = make(scale=1.0, gamma=0.3).loss({"z": z}, SINGLE, None)  # eq. 11 as printed: theta = <v_i, v_j>
    l1 = (softplus(1.25) - 1.25 + 2 * softplus(0.25) + softplus(0.5) - 0.5) / 4
    assert parts["likelihood"] == pytest.approx(l1, rel=1e-6)


def test_default_scale_makes_eq_16_the_gradient():
    torch.manual_seed(0)
    n, k, gamma = 6, 8, 0.1
    u = (torch.rand(n, k, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()  # inside [-1, 1]: f(u) = u
    labels = torch.eye(3, dtype=torch.float64)[torch.tensor([0, 1, 2, 0, 1, 1])]
    loss, _ = make(bits=k).loss({"z": u}, {"label": labels, "index": torch.arange(n)}, None)
    (grad,) = torch.autograd.grad(loss, u)
    with torch.no_grad():
        s = (labels @ labels.t() > 0).double()
        a = torch.sigmoid(0.5 * u @ u.t())  # a_ij = sigma(u_i^T u_j / 2)
        eq16 = 0.5 * (a - s) @ u + 0.5 * (a - s).t() @ u  # the pair sums of eq. 16
        # attnhash averages L1 over the n^2 pairs; eq. 12's mean over the batch gives 2 gamma mean / n
        expected = eq16 / n**2 + 2 * gamma * u.mean(dim=0, keepdim=True) / n
    torch.testing.assert_close(grad, expected)


def test_bank_holds_the_clipped_outputs():
    method = make(bits=2)
    labels = torch.eye(2)[[0, 1, 1]]
    method.setup(setup_context(3, labels))
    method.loss({"z": torch.tensor([[3.0, -0.2]])}, {"label": labels[:1], "index": torch.tensor([1])}, None)
    assert method.bank.codes[1].tolist() == pytest.approx([1.0, -0.2])
    assert method.bank.filled.tolist() == [False, True, False]


def model_cfg(backbone="resnet18", bits=16, extra=()):
    return build_config("dhida", overrides=[f"model.backbone={backbone}", "model.weights=none",
                                            f"model.bits={bits}", *extra]).model


def test_recipe_records_the_paper_settings():
    cfg = build_config("dhida")
    assert cfg.model.attention == "ida"
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("rmsprop", 5e-5, 1e-5)
    assert cfg.train.batch_size == 128 and cfg.data.image_size == 224
    assert cfg.method.params == {"gamma": 0.1, "scale": 0.5}
    assert build_config("dhida", overrides=["data.image_size=64"]).data.image_size == 64


def test_network_and_ablations():
    net = make(bits=16).build_network(model_cfg())
    assert type(net.attention).__name__ == "DualAttention" and net.attention.improved
    assert net.classifier is None
    danet = make(bits=16, ablate=("ida",)).build_network(model_cfg())
    assert danet.attention.improved is False
    assert make(bits=16, ablate=("attention",)).build_network(model_cfg()).attention is None
    assert make(bits=16, ablate=("attention", "ida")).build_network(model_cfg()).attention is None
    with pytest.raises(ConfigError, match="ida"):
        make(bits=16, ablate=("ida",)).build_network(model_cfg(extra=("model.attention=simam",)))
    with pytest.raises(ConfigError):
        make(ablate=("regularizer",))


def test_ida_network_starts_as_the_plain_network():
    no_input_conv = model_cfg(extra=("model.attention_args={}",))  # A = the backbone's map itself
    with_ida = make(bits=16).build_network(no_input_conv)
    assert with_ida.attention.input is None
    plain = make(bits=16, ablate=("attention",)).build_network(no_input_conv)
    plain.load_state_dict({k: v for k, v in with_ida.state_dict().items() if not k.startswith("attention.")})
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(with_ida.eval()(images)["z"], plain.eval()(images)["z"])


@pytest.mark.parametrize("ablate", [(), ("ida",), ("attention", "piecewise")])
def test_encoder_rebuilds_the_same_network(ablate):
    cfg = build_config("dhida", overrides=["model.backbone=resnet18", "model.weights=none", "model.bits=32"])
    cfg.method.ablate = list(ablate)
    method = make(bits=32, ablate=ablate)
    trained = method.build_network(cfg.model)
    # what the encoder does: the spec saved as JSON in the checkpoint, then the network from it alone
    rebuilt = network_from_spec(json.loads(json.dumps(method.network_spec(cfg.model).to_dict())))
    assert list(rebuilt.state_dict()) == list(trained.state_dict())
    assert type(rebuilt.attention) is type(trained.attention)
    assert getattr(rebuilt.attention, "improved", None) == getattr(trained.attention, "improved", None)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_and_bit_length_builds_and_runs(backbone, shared_backbones):
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    for bits in BITS:
        net = make(bits=bits).build_network(model_cfg(backbone, bits)).eval()
        with torch.no_grad():
            out = net(images)
        assert out["z"].shape == (2, bits) and torch.isfinite(out["z"]).all()
        assert net.attention.last_map.shape == (2, *out["fmap"].shape[-2:])


def test_training_lowers_the_loss(fmnist, quick_train):
    # ResNet18 from scratch at 64 px (2x2 maps, 512 channels): the IDA channel map stays small
    losses, method, network = quick_train("dhida", fmnist, steps=10, batch_size=16, backbone="resnet18")
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert method.bank.filled.all() and method.bank.codes.abs().max() <= 1.0
    assert network.attention.alpha.item() != 0.0 and network.attention.beta.item() != 0.0  # the scales learn


def test_recipe_reads_the_backbone_map_and_starts_as_the_plain_network(shared_backbones):
    # The recipe's default (issue 16): no fresh input convolution in front of the pretrained features, whose
    # damage grows with the code length (methods/dhida.py); IDA is then the identity at initialisation.
    cfg = model_cfg("efficientnet_lite0")
    assert cfg.attention_args == {"width": None}
    net = make(bits=64).build_network(cfg)
    assert net.attention.input is None and net.hash_layer[-1].in_features == 1280
    plain = make(bits=64, ablate=("attention",)).build_network(cfg)
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("attention.")})
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(images)["z"], plain.eval()(images)["z"])


def test_the_papers_input_convolution_sets_the_channels_the_hash_layer_sees(shared_backbones):
    paper = ("model.attention_args.width=512",)
    net = make(bits=16).build_network(model_cfg("efficientnet_lite0", extra=paper))
    assert net.attention.input[0].in_channels == 1280 and net.hash_layer[-1].in_features == 512
    plain = make(bits=16, ablate=("attention",)).build_network(model_cfg("efficientnet_lite0", extra=paper))
    assert plain.hash_layer[-1].in_features == 1280
    # AlexNet's fc6 takes 256 channels, so A keeps them; inside ResNet blocks the width cannot change
    alexnet = make(bits=16).build_network(model_cfg("alexnet", extra=paper))
    assert alexnet.attention.out_channels == 256 and alexnet.hash_layer[-1].in_features == 4096
    with pytest.raises(ConfigError, match="blocks"):
        make(bits=16).build_network(model_cfg("resnet18", extra=(*paper, "model.attention_placement=blocks")))
