"""EGA: the CAM branch learns where the object is (stage 1), is frozen for hashing (stage 2), trains on
real Fashion-MNIST, and its ablation removes the weighting."""

import numpy as np
import pytest
import torch

from attnhash.config import build_config
from attnhash.methods.base import TrainContext, create_method
from attnhash.models.attention.cam import CAMAttention
from attnhash.training import make_optimizer

SIZE, SIDE, CELL = 96, 28, 16  # 96 px images, 28 px objects, a 6x6 map at output stride 16
N_TRAIN, N_EVAL = 96, 48


def synthetic_objects(n: int, seed: int):
    """Grey images with one bright object at a random position; its class is its shape (square or cross)."""
    rng = np.random.default_rng(seed)
    images = np.clip(rng.normal(90, 4, size=(n, SIZE, SIZE)), 0, 255)
    boxes, classes = [], []
    for i in range(n):
        x0, y0 = (int(v) for v in rng.integers(0, SIZE - SIDE + 1, 2))
        if i % 2 == 0:
            images[i, y0:y0 + SIDE, x0:x0 + SIDE] = 235
        else:
            t = SIDE // 3
            images[i, y0 + t:y0 + 2 * t, x0:x0 + SIDE] = 235
            images[i, y0:y0 + SIDE, x0 + t:x0 + 2 * t] = 235
        boxes.append((x0, y0, x0 + SIDE, y0 + SIDE))
        classes.append(i % 2)
    x = torch.from_numpy(np.repeat(images[:, None], 3, axis=1).astype(np.uint8))
    return x, torch.nn.functional.one_hot(torch.tensor(classes), 2).float(), boxes


def ega_on_cached_maps(maps, labels, optim=(), epochs=2, stage1_epochs=1, ablate=(), log=None):
    """EGA on pretrained EfficientNet-Lite0 (all stages frozen, output stride 16) fed with cached final maps,
    through the method's own hooks."""
    torch.manual_seed(0)
    overrides = ["model.backbone=efficientnet_lite0", "model.freeze=all", "model.output_stride=16",
                 "model.bits=16", f"method.params.stage1_epochs={stage1_epochs}", *optim]
    cfg = build_config("ega", overrides=overrides)
    method = create_method("ega", cfg.method.params, 16, num_classes=2, num_train=len(labels), ablate=ablate)
    network = method.build_network(cfg.model)
    network.backbone.freeze("all")
    start = len(network.backbone.stages())
    batches = [{"input": maps[s:s + 32], "label": labels[s:s + 32], "index": torch.arange(s, min(s + 32, len(labels))),
                "start_stage": start} for s in range(0, len(labels), 32)]
    ctx = TrainContext(network=network, forward=lambda b: network(b["input"], start_stage=b["start_stage"]),
                       optimizer=make_optimizer(cfg, method.trainable_parameters(network)), train_labels=labels,
                       num_train=len(labels), epochs=epochs, device=torch.device("cpu"), train_loader=batches,
                       steps_per_epoch=len(batches), log=log or (lambda m: None))
    method.setup(ctx)
    return method, network, ctx, batches


@pytest.fixture(scope="module")
def objects():
    x, y, boxes = synthetic_objects(N_TRAIN + N_EVAL, seed=0)
    cfg = build_config("ega", overrides=["model.backbone=efficientnet_lite0", "model.output_stride=16"])
    net = create_method("ega", {}, 16, num_classes=2, num_train=1).build_network(cfg.model).eval()
    with torch.no_grad():
        maps = torch.cat([net.backbone.forward_features(net.normalize(x[s:s + 48])) for s in range(0, len(x), 48)])
    assert maps.shape[-2:] == (SIZE // CELL, SIZE // CELL)
    return maps, y, boxes


def run_epoch(method, ctx, batches, steps):
    method.on_epoch_start(ctx)
    ctx.network.train()
    out = []
    for i in range(steps):
        out.append(method.training_step(batches[i % len(batches)], ctx))
        ctx.step += 1
    return out


def test_stage1_map_peaks_on_the_object(objects):
    maps, labels, boxes = objects
    method, network, ctx, batches = ega_on_cached_maps(maps[:N_TRAIN], labels[:N_TRAIN])
    assert method.stage == 1 and int(network.attention.stage) == 1
    parts = run_epoch(method, ctx, batches, 150)
    assert all(p["stage"] == 1.0 for p in parts) and parts[-1]["classification"] < 0.1

    network.eval()
    with torch.no_grad():
        out = network(maps[N_TRAIN:], start_stage=len(network.backbone.stages()))
    accuracy = float((out["cam_logits"].argmax(1) == labels[N_TRAIN:].argmax(1)).float().mean())
    assert accuracy > 0.9
    a = network.attention.last_map
    assert a.shape == (N_EVAL, 6, 6) and float(a.min()) >= 0 and torch.allclose(a.amax(dim=(1, 2)), torch.ones(N_EVAL))
    # The map is 6x6 (16 px cells): the peak cell must touch the object grown by half a cell.
    grown = [(x0 - CELL // 2, y0 - CELL // 2, x1 + CELL // 2, y1 + CELL // 2) for x0, y0, x1, y1 in boxes[N_TRAIN:]]
    hits, chance, centred = 0, 0.0, 0
    centres = torch.arange(6) * CELL + CELL / 2
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    for m, (x0, y0, x1, y1) in zip(a, grown):
        r, c = divmod(int(m.argmax()), 6)
        hits += (CELL * c < x1) and (CELL * c + CELL > x0) and (CELL * r < y1) and (CELL * r + CELL > y0)
        touching = (cx - CELL / 2 < x1) & (cx + CELL / 2 > x0) & (cy - CELL / 2 < y1) & (cy + CELL / 2 > y0)
        chance += float(touching.float().mean())  # a peak on a random cell
        # and the map's centre of mass lies on the (grown) object
        mx, my = float((m * cx).sum() / m.sum()), float((m * cy).sum() / m.sum())
        centred += (x0 <= mx < x1) and (y0 <= my < y1)
    hit_rate, chance = hits / N_EVAL, chance / N_EVAL
    assert hit_rate >= 0.8 and hit_rate > 2 * chance, (hit_rate, chance)
    assert centred / N_EVAL >= 0.85, centred / N_EVAL


def test_stage_switch_freezes_the_branch_even_with_momentum_and_weight_decay(objects):
    maps, labels, _ = objects
    messages = []
    method, network, ctx, batches = ega_on_cached_maps(
        maps[:64], labels[:64], optim=["optim.name=sgd", "optim.momentum=0.9", "optim.weight_decay=0.05"],
        log=messages.append)
    cam = network.attention
    ctx.epoch = 0
    run_epoch(method, ctx, batches, 3)
    hash_before = network.hash_layer[-1].weight.detach().clone()
    assert torch.equal(network.hash_layer[-1].weight, hash_before)  # idle in stage 1 (no gradient, no decay)
    ctx.epoch = 1
    run_epoch(method, ctx, batches, 1)  # switches at this epoch start
    branch = {k: v.clone() for k, v in cam.state_dict().items()}
    parts = run_epoch(method, ctx, batches, 3)
    assert method.stage == 2 and int(cam.stage) == 2 and all(p["stage"] == 2.0 for p in parts)
    assert all(not p.requires_grad and p.grad is None for p in cam.parameters())
    held = {id(p) for g in ctx.optimizer.param_groups for p in g["params"]}
    assert not held & {id(p) for p in cam.parameters()}
    assert not any(id(p) in {id(q) for q in ctx.optimizer.state} for p in cam.parameters())
    for k, v in cam.state_dict().items():
        assert torch.equal(v, branch[k]), k
    assert not torch.equal(network.hash_layer[-1].weight, hash_before)
    assert any("stage 2" in m for m in messages) and any("epoch 1: stage 1" in m for m in messages)


def test_short_runs_still_reach_the_hashing_stage(objects):
    maps, labels, _ = objects
    messages = []
    method, _, ctx, batches = ega_on_cached_maps(maps[:64], labels[:64], epochs=1, stage1_epochs=3,
                                                 log=messages.append)
    assert method.switch_step == 1 and any("single epoch" in m for m in messages)
    ctx.epoch = 0
    parts = run_epoch(method, ctx, batches, 2)
    assert [p["stage"] for p in parts] == [1.0, 2.0]
    method, *_ = ega_on_cached_maps(maps[:64], labels[:64], epochs=3, stage1_epochs=5)
    assert method.switch_epoch == 1
    method, network, *_ = ega_on_cached_maps(maps[:64], labels[:64], epochs=3, stage1_epochs=0)
    assert method.stage == 2 and not any(p.requires_grad for p in network.attention.parameters())


def test_weighting_and_its_ablation_and_the_saved_stage(objects):
    maps, labels, _ = objects
    start = None
    outs = {}
    for ablate in ((), ("attention",)):
        method, network, ctx, _ = ega_on_cached_maps(maps[:64], labels[:64], stage1_epochs=0, ablate=ablate)
        start = len(network.backbone.stages())
        network.eval()
        with torch.no_grad():
            outs[ablate] = network(maps[:4], start_stage=start)
        a = network.attention.last_map
        expected = maps[:4] * (1 + a.unsqueeze(1)) if not ablate else maps[:4]
        torch.testing.assert_close(outs[ablate]["fmap"], expected)
    # the stage is part of the checkpoint: an encoder rebuilt from the saved state weights the features too
    rebuilt = type(method)(None, bits=16, num_classes=2, num_train=0).build_network(
        build_config("ega", overrides=["model.backbone=efficientnet_lite0", "model.output_stride=16",
                                        "model.weights=none", "model.bits=16"]).model)
    state = network.state_dict()
    assert "attention.stage" in state and int(state["attention.stage"]) == 2
    rebuilt.load_state_dict(state)
    assert isinstance(rebuilt.attention, CAMAttention) and int(rebuilt.attention.stage) == 2


def test_ega_trains_on_fashion_mnist_and_lowers_its_loss(fmnist, quick_train):
    # lr 1e-4: the random-init ResNet's features make Adam's 1e-3 overshoot the pairwise loss in a few steps
    losses, method, network = quick_train("ega", fmnist, steps=12, epochs=2, bits=32, image_size=64,
                                          params={"stage1_epochs": 1}, model={"freeze": "layer3"},
                                          optim={"lr": 1e-4})
    classification, hashing = losses[:6], losses[6:]
    assert method.stage == 2
    assert sum(classification[-2:]) < sum(classification[:2])
    assert sum(hashing[-2:]) < sum(hashing[:2])


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50", "alexnet", "efficientnet_lite0"])
def test_every_backbone_and_bit_length_builds_and_runs(backbone, shared_backbones):
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    for bits in (16, 32, 48, 64, 128):
        cfg = build_config("ega", overrides=[f"model.backbone={backbone}", "model.weights=none", f"model.bits={bits}"])
        net = create_method("ega", None, bits, num_classes=10, num_train=2).build_network(cfg.model).eval()
        with torch.no_grad():
            out = net(images)
        assert out["z"].shape == (2, bits) and out["cam_logits"].shape == (2, 10)
        assert torch.isfinite(out["z"]).all()
        assert net.attention.last_map.shape == (2, *out["fmap"].shape[-2:])
