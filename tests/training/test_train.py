"""The generic trainer's pieces: optimizer groups, gradient clipping, reproducibility, unsupervised isolation."""

import pytest
import torch

from attnhash.config import build_config
from attnhash.methods.base import TrainContext, create_method
from attnhash.training import make_optimizer, train


def _setup(optim_overrides, fmnist_batch):
    cfg = build_config("dpsh", overrides=["model.backbone=resnet18", "model.weights=none", "model.bits=16",
                                          *optim_overrides])
    torch.manual_seed(0)
    method = create_method("dpsh", cfg.method.params, 16, num_classes=10, num_train=8)
    net = method.build_network(cfg.model)
    opt = make_optimizer(cfg, method.trainable_parameters(net))
    ctx = TrainContext(network=net, forward=lambda b: net(b["input"]), optimizer=opt,
                       train_labels=fmnist_batch["label"], num_train=8, epochs=1, device=torch.device("cpu"),
                       grad_clip=cfg.optim.grad_clip)
    method.setup(ctx)
    return cfg, method, net, opt, ctx


@pytest.fixture
def batch(fmnist):
    from conftest import fmnist_batches

    batches, _ = fmnist_batches(fmnist, n_batches=1, batch_size=8, image_size=32)
    return batches[0]


def test_backbone_lr_scale_makes_two_groups(batch):
    _, _, _, opt, _ = _setup(["optim.lr=0.01", "optim.backbone_lr_scale=0.1"], batch)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"head": 0.01, "backbone": pytest.approx(0.001)}


def test_grad_clip_bounds_the_update(batch):
    def update_norm(clip):
        extra = ["optim.name=sgd", "optim.momentum=0", "optim.weight_decay=0", "optim.lr=1.0"]
        extra += [f"optim.grad_clip={clip}"] if clip else []
        _, method, net, _, ctx = _setup(extra, batch)
        before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
        method.training_step(batch, ctx)
        after = torch.cat([p.detach().flatten() for p in net.parameters()])
        return float((after - before).norm())

    assert update_norm(1e-3) == pytest.approx(1e-3, rel=1e-3)  # lr 1 x clipped norm
    assert update_norm(None) > 1e-2


def test_same_seed_same_weights_and_unsupervised_runs_never_see_labels(fmnist, tmp_path, monkeypatch):
    overrides = ["data.image_size=32", "data.train_limit=64", "model.backbone=resnet18", "model.weights=none",
                 "model.bits=16", "train.epochs=1", "train.batch_size=32", "optim.lr=0.0001"]
    a = train(build_config("dpsh", overrides=overrides), run_dir=tmp_path / "a", progress=False, log=lambda m: None)
    b = train(build_config("dpsh", overrides=overrides), run_dir=tmp_path / "b", progress=False, log=lambda m: None)
    from safetensors.torch import load_file

    wa, wb = load_file(a.run_dir / "model.safetensors"), load_file(b.run_dir / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    from attnhash.methods.dpsh import DPSH

    seen = []
    original = DPSH.training_step

    def spy(self, batch, ctx):
        seen.append(("label" in batch, ctx.train_labels is None))
        return original(self, batch, ctx)

    monkeypatch.setattr(DPSH, "supervised", False)  # pretend DPSH were unsupervised: labels must vanish
    monkeypatch.setattr(DPSH, "training_step", spy)
    monkeypatch.setattr(DPSH, "setup", lambda self, ctx: setattr(self, "bank", None))
    monkeypatch.setattr(DPSH, "loss", lambda self, out, batch, ctx: (out["z"].pow(2).mean(), {}))
    train(build_config("dpsh", overrides=overrides), run_dir=tmp_path / "c", progress=False, log=lambda m: None)
    assert seen and all(has_label is False and no_labels for has_label, no_labels in seen)
