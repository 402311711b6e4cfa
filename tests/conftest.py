"""Shared fixtures: real Fashion-MNIST samples, a quick method-training harness, a tiny trained run."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

FMNIST_DIR = os.environ.get("ATTNHASH_FMNIST_DIR", "/usr/share/datasets/fashion-mnist")


def pytest_configure(config):
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Split files and feature caches of tests never land in the user's cache folder."""
    monkeypatch.setenv("ATTNHASH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def fmnist():
    """The real Fashion-MNIST (70,000 images) as an ImageSource; skipped when the Debian package is absent."""
    if not os.path.isdir(FMNIST_DIR):
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    from attnhash.data import load_fashion_mnist

    return load_fashion_mnist(FMNIST_DIR)


def foolbox_photos() -> list:
    """The 20 real ImageNet photos PyPI foolbox ships (JPEG, various sizes), or [] when it is not installed."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("foolbox")  # not imported: foolbox's own dependencies are not installed
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted((Path(list(spec.submodule_search_locations)[0]) / "data").glob("imagenet_*.jpg"))


@pytest.fixture(scope="session")
def photos():
    found = foolbox_photos()
    if not found:
        pytest.skip("foolbox (its ImageNet sample photos) is not installed: scripts/setup.sh --dev")
    return found


def fmnist_batches(source, n_batches: int = 3, batch_size: int = 24, image_size: int = 64, seed: int = 0):
    """A few fixed batches of real images, in the trainer's batch format (input, label, index)."""
    from attnhash.data import ImageDataset

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(60000, size=n_batches * batch_size, replace=False))
    ds = ImageDataset(source, idx, image_size)
    labels = torch.from_numpy(np.asarray(source.labels)[idx].astype(np.float32))
    images = torch.stack([ds[i]["image"] for i in range(len(idx))])
    batches = []
    for b in range(n_batches):
        s = slice(b * batch_size, (b + 1) * batch_size)
        batches.append({"input": images[s], "label": labels[s], "index": torch.arange(len(idx))[s],
                        "start_stage": 0})
    return batches, labels


def train_steps(method_name: str, source, steps: int = 12, bits: int = 32, backbone: str = "resnet18",
                image_size: int = 64, params: dict | None = None, model: dict | None = None,
                optim: dict | None = None, ablate=(), n_batches: int = 3, batch_size: int = 24, epochs: int = 1,
                seed: int = 0):
    """Run a method's own training_step on a few real batches; returns (losses per step, method, network).

    Goes through the same hooks as the trainer (setup, on_epoch_start, training_step) so a method's test
    exercises its real code path, only on a handful of images so it takes seconds.
    """
    from attnhash.config import build_config
    from attnhash.methods.base import TrainContext, create_method
    from attnhash.training import make_optimizer

    torch.manual_seed(seed)
    overrides = [f"model.bits={bits}", f"model.backbone={backbone}", "model.weights=none"]
    for section, values in (("model", model or {}), ("optim", optim or {})):
        overrides += [f"{section}.{k}={v}" for k, v in values.items()]
    cfg = build_config(method_name, overrides=overrides)
    cfg.method.params.update(params or {})
    batches, labels = fmnist_batches(source, n_batches, batch_size, image_size, seed)
    method = create_method(method_name, cfg.method.params, bits, num_classes=labels.shape[1],
                           num_train=len(labels), ablate=tuple(ablate))
    network = method.build_network(cfg.model)
    network.backbone.freeze(cfg.model.freeze)
    optimizer = make_optimizer(cfg, method.trainable_parameters(network))
    if not method.supervised:
        batches = [{k: v for k, v in b.items() if k != "label"} for b in batches]
    ctx = TrainContext(
        network=network,
        forward=lambda b: network(b["input"], start_stage=b.get("start_stage", 0)),
        optimizer=optimizer,
        train_labels=labels if method.supervised else None,
        num_train=len(labels),
        epochs=epochs,
        device=torch.device("cpu"),
        train_loader=batches,
        steps_per_epoch=len(batches),
        log=lambda msg: None,
    )
    method.setup(ctx)
    losses = []
    step = 0
    for epoch in range(epochs):
        ctx.epoch = epoch
        method.on_epoch_start(ctx)
        network.train()
        for _ in range(max(1, steps // epochs)):
            parts = method.training_step(batches[step % len(batches)], ctx)
            ctx.step += 1
            step += 1
            losses.append(parts["loss"])
    return losses, method, network


@pytest.fixture
def quick_train():
    return train_steps


@pytest.fixture(scope="module")
def shared_backbones():
    """Each backbone built once for a module's grid of (backbone, bits) networks: building ResNet50 and
    AlexNet again for every case would dominate those tests. Only plain builds (no extra kwargs) are shared."""
    import attnhash.models.network as network_module

    cache = {}
    real = network_module.create_backbone

    def cached(name, weights="auto", **kwargs):
        if kwargs:
            return real(name, weights=weights, **kwargs)
        if name not in cache:
            cache[name] = real(name, weights=weights).eval()
        return cache[name]

    network_module.create_backbone = cached
    yield
    network_module.create_backbone = real


def setup_context(num_train: int, train_labels: torch.Tensor, **fields):
    """A TrainContext for calling a method's setup/loss hooks directly: no network or optimizer, one process."""
    from attnhash.methods.base import TrainContext

    return TrainContext(network=None, forward=None, optimizer=None, train_labels=train_labels, num_train=num_train,
                        epochs=fields.pop("epochs", 1), device=fields.pop("device", torch.device("cpu")), **fields)


@pytest.fixture(scope="module")
def lite_run(tmp_path_factory):
    """A DPFAH run on the pretrained EfficientNet-Lite0 at the demo's settings (SimAM attention, classifier):
    real features, an untrained hash layer; its z values spread as a trained run's do."""
    from attnhash.config import build_config
    from attnhash.methods import create_method
    from attnhash.runs import RunFolder

    folder = tmp_path_factory.mktemp("lite") / "run"
    cfg = build_config("dpfah", overrides=["model.bits=64", "data.image_size=32", "model.output_stride=16"])
    method = create_method("dpfah", cfg.method.params, 64, num_classes=10, num_train=0)
    spec = method.network_spec(cfg.model)
    RunFolder(folder).save_model(spec.build().state_dict(), cfg, spec.to_dict(), {"num_classes": 10})
    return folder
