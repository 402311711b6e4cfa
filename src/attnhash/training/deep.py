"""The one training loop of the deep methods. It knows nothing about any particular method: it builds the method's network,
feeds batches to the method's `training_step`, calls its hooks, logs, and saves the checkpoint.

CPU economy: when the first backbone stages are frozen (model.freeze) and training images are not
augmented, their output is the same at every epoch, so it is computed once and training runs on the
cached feature maps (train.frozen_cache: "memory" for this run, "disk" shared by every run with the same
frozen prefix, see attnhash.stagecache). This is exact, not an approximation: frozen stages run in eval
mode (fixed BatchNorm statistics, no dropout).
"""

from __future__ import annotations

import copy
import math
import random
import time
from typing import Callable, Iterator

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from attnhash.config import RunConfig
from attnhash.data import ImageDataset, RunData, augment_batch
from attnhash.errors import ConfigError
from attnhash.inference import encode_indices
from attnhash.inference.distributed import SINGLE, Distributed
from attnhash.inference.stagecache import run_prefix, stage_outputs
from attnhash.methods import TrainContext, create_method
from attnhash.metrics import mean_average_precision
from attnhash.runs import RunFolder
from attnhash.training.common import TrainResult, run_meta

CACHE_LIMIT_BYTES = 6 << 30  # above this, frozen features are recomputed each epoch instead of cached


def make_optimizer(cfg: RunConfig, groups: list[dict]) -> torch.optim.Optimizer:
    o = cfg.optim
    for g in groups:
        g["lr"] = o.lr * (o.backbone_lr_scale if g.get("name") == "backbone" else 1.0)
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("nothing to train: every parameter is frozen")
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)


def make_scheduler(cfg: RunConfig, optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
    o = cfg.optim
    if o.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=o.step_size, gamma=o.gamma)
    if o.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs)
    return None


class TrainBatches:
    """Shuffled training batches as dicts: input (images or cached frozen features), label, index.

    `index` is the position in the training set (0..n-1), which methods use to address per-item state.
    Labels are left out for unsupervised methods, so they cannot use them even by mistake.
    Under distributed training every process draws the same permutation (the same seeded generator) and
    takes its own share of it (every world_size-th item, the set cut to a multiple of world_size so that
    every process makes the same number of batches of the same sizes), as torch's DistributedSampler does.
    """

    def __init__(self, network, data: RunData, indices: np.ndarray, cfg: RunConfig, device, generator,
                 with_labels: bool, log: Callable[[str], None], progress: bool, dist: Distributed = SINGLE):
        self.cfg, self.device, self.generator, self.dist = cfg, device, generator, dist
        self.n = len(indices)
        self.per_process = self.n // dist.world_size
        self.labels = torch.from_numpy(data.labels[indices].astype(np.float32)) if with_labels else None
        self.dataset = ImageDataset(data.source, indices, cfg.data.image_size)
        self.start_stage = 0
        self.cache = None
        frozen = network.backbone.frozen_stages
        mode = cfg.train.frozen_cache
        if mode != "off" and frozen > 0 and not cfg.data.augment:
            if mode == "disk":
                self.cache = stage_outputs(network, data.source, indices, cfg.data.image_size, frozen, device,
                                           progress=progress, log=log).to(device)
            else:
                self.cache = self._cache_frozen(network, frozen, log, progress)
            if self.cache is not None:
                self.start_stage = frozen

    @torch.no_grad()
    def _cache_frozen(self, network, frozen: int, log, progress):
        loader = DataLoader(self.dataset, batch_size=256, shuffle=False, num_workers=self.cfg.train.num_workers)
        parts, nbytes, t0 = [], 0, time.time()
        network.eval()
        for batch in tqdm(loader, desc="cache frozen stages", leave=False, disable=None if progress else True):
            x = run_prefix(network, batch["image"], frozen, self.device)
            parts.append(x)
            nbytes += x.numel() * x.element_size()
            if nbytes * self.n / max(1, sum(len(p) for p in parts)) > CACHE_LIMIT_BYTES:
                log("frozen features would not fit the cache limit; recomputing them every epoch instead")
                return None
        log(f"cached frozen stages 1-{frozen} for {self.n} training images in {time.time() - t0:.1f}s "
            f"({nbytes / 2**20:.0f} MiB)")
        return torch.cat(parts)

    def __len__(self) -> int:
        return math.ceil(self.per_process / self.cfg.train.batch_size)

    def __iter__(self) -> Iterator[dict]:
        order = torch.randperm(self.n, generator=self.generator)
        if self.dist.active:
            order = order[: self.per_process * self.dist.world_size][self.dist.rank :: self.dist.world_size]
        bs = self.cfg.train.batch_size
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            if len(idx) < 2 and len(order) >= 2:
                continue  # a batch of one breaks BatchNorm and pairwise losses
            if self.cache is not None:
                x = self.cache[idx.to(self.cache.device)]
                if self.device.type == "cpu":
                    x = x.contiguous(memory_format=torch.channels_last)
            else:
                x = torch.stack([self.dataset[int(i)]["image"] for i in idx])
                if self.cfg.data.augment:
                    x = augment_batch(x, self.generator)
                x = x.to(self.device)
                if self.device.type == "cpu":
                    x = x.contiguous(memory_format=torch.channels_last)
            batch = {"input": x, "index": idx.to(self.device), "start_stage": self.start_stage}
            if self.labels is not None:
                batch["label"] = self.labels[idx].to(self.device)
            yield batch


def _split_validation(train: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 7)
    perm = rng.permutation(train)
    n_val = max(1, int(round(len(train) * fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _rng_state(generator: torch.Generator, device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "batches": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    generator.set_state(state["batches"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def train_deep(cfg: RunConfig, run: RunFolder, data: RunData, device: torch.device, generator: torch.Generator,
               progress: bool = True, log: Callable[[str], None] = print, resume: dict | None = None,
               dist: Distributed = SINGLE) -> TrainResult:
    """Train the deep method of `cfg` and save its run folder; returns where and how fast.

    After every epoch the whole training state (network, optimiser, scheduler, method state, RNGs, history)
    is saved in the run folder; `resume` (that state) continues from the epoch after it and ends with the
    weights an uninterrupted run would have.

    Under torchrun (`dist` active) the network is wrapped in DistributedDataParallel (gradients averaged over
    the processes), each process trains on its share of every epoch's batches, methods keep their shared
    state the same in every process (TrainContext.dist), and only the first process writes the run folder.
    A batch size is per process: the effective batch is world_size times larger."""
    train_idx, val_idx = data.train, None
    if cfg.train.select == "val":
        train_idx, val_idx = _split_validation(data.train, cfg.train.val_fraction, cfg.train.seed)
    method = create_method(
        cfg.method.name, cfg.method.params, cfg.model.bits,
        num_classes=data.num_classes, num_train=len(train_idx), ablate=cfg.method.ablate,
    )
    refusal = method.distributed_refusal() if dist.active else None
    if refusal:
        raise ConfigError(f"{cfg.method.name} cannot train in {dist.world_size} processes: {refusal}")
    spec = method.network_spec(cfg.model)
    network = spec.build()
    network.backbone.freeze(cfg.model.freeze)
    network.to(device)
    method.to(device)
    if device.type == "cpu" and cfg.train.channels_last:
        network.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, method.trainable_parameters(network))
    scheduler = make_scheduler(cfg, optimizer)

    batches = TrainBatches(network, data, train_idx, cfg, device, generator, method.supervised, log, progress,
                           dist)
    start_stage = batches.start_stage
    # find_unused_parameters: a method may leave a branch idle for a while (EGA's hash layer in stage 1)
    model = DistributedDataParallel(network, find_unused_parameters=True,
                                    device_ids=[device.index] if device.type == "cuda" else None) \
        if dist.active else network

    def forward(batch: dict) -> dict:
        return model(batch["input"], start_stage=batch.get("start_stage", start_stage))

    ctx = TrainContext(
        network=network,
        forward=forward,
        optimizer=optimizer,
        train_labels=batches.labels.to(device) if batches.labels is not None else None,
        num_train=len(train_idx),
        epochs=cfg.train.epochs,
        device=device,
        train_loader=batches,
        steps_per_epoch=len(batches),
        amp=cfg.train.amp == "bf16",
        grad_clip=cfg.optim.grad_clip,
        log=log,
        dist=dist,
    )
    method.setup(ctx)

    history: list[dict] = []
    best = (-1.0, None, -1)
    t_start = time.time()
    train_seconds = 0.0
    first_epoch = 0
    if resume is None:
        if dist.is_main:
            run.start_training(cfg)
    else:  # everything set up as at the start; now the state after the last finished epoch
        network.load_state_dict(resume["network"])
        method.load_training_state(resume["method"], ctx)
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume["scheduler"])
        ctx.step, ctx.extras = resume["step"], resume["extras"]
        history, train_seconds = resume["history"], resume["train_seconds"]
        best = (resume["best"][0], resume["best"][1], resume["best"][2])
        first_epoch = resume["epoch"]
        _set_rng_state(resume["rng"], generator, device)
        if dist.is_main:
            run.write_log(history)  # a record written after the state was saved is for an epoch done again
        log(f"resuming {run.path} after epoch {first_epoch} of {cfg.train.epochs}")
    for epoch in range(first_epoch, cfg.train.epochs):
        ctx.epoch = epoch
        method.on_epoch_start(ctx)
        network.train()
        sums: dict[str, float] = {}
        steps = 0
        t0 = time.time()
        bar = tqdm(batches, total=len(batches), disable=None if progress else True, leave=False,
                   desc=f"epoch {epoch + 1}/{cfg.train.epochs}")
        for batch in bar:
            parts = method.training_step(batch, ctx)
            ctx.step += 1
            steps += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if not math.isfinite(parts.get("loss", 0.0)):
                raise ConfigError(f"training diverged at epoch {epoch + 1} (loss {parts['loss']}); lower optim.lr")
            bar.set_postfix(loss=f"{parts['loss']:.4f}")
        seconds = time.time() - t0
        train_seconds += seconds
        if scheduler is not None:
            scheduler.step()
        record = {
            "epoch": epoch + 1,
            **{k: v / max(steps, 1) for k, v in sums.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 2),
            "images_per_s": round(batches.n / max(seconds, 1e-9), 1),
        }
        if val_idx is not None:
            record["val_mAP"] = _validation_map(network, data, train_idx, val_idx, cfg, device)
            if record["val_mAP"] > best[0]:
                best = (record["val_mAP"], copy.deepcopy(network.state_dict()), epoch + 1)
        history.append(record)
        log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if not dist.is_main:
            continue
        run.append_log(record)
        run.save_train_state({
            "epoch": epoch + 1, "step": ctx.step, "extras": ctx.extras, "network": network.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None,
            "method": method.training_state(), "rng": _rng_state(generator, device), "history": history,
            "train_seconds": train_seconds, "best": list(best),
        })

    if best[1] is not None:
        network.load_state_dict(best[1])
        log(f"kept epoch {best[2]} (best validation mAP {best[0]:.4f})")
    total = time.time() - t_start
    meta = run_meta(
        cfg, data, len(train_idx), device,
        train_seconds=round(train_seconds, 2),
        total_seconds=round(total, 2),
        images_per_second=round(len(train_idx) * cfg.train.epochs / max(train_seconds, 1e-9), 1),
        selected_epoch=best[2] if best[1] is not None else cfg.train.epochs,
        frozen_stages=network.backbone.frozen_stages,
        cached_frozen=start_stage > 0,
    )
    if dist.active:
        meta["world_size"] = dist.world_size
    ckpt = run.checkpoint_path
    if dist.is_main:
        ckpt = run.save_model(network.state_dict(), cfg, spec.to_dict(), meta)
        run.finish_training()
    dist.barrier()  # the other processes return once the run folder is complete
    return TrainResult(run.path, ckpt, total, meta["images_per_second"], history)


def _validation_map(network, data: RunData, fit_idx, val_idx, cfg: RunConfig, device) -> float:
    """mAP of held-out training images (queries) against the rest of train (database): selection without
    looking at the protocol's query set."""
    q = encode_indices(network, data.source, val_idx, cfg.data.image_size, device, cfg.eval.batch_size)
    d = encode_indices(network, data.source, fit_idx, cfg.data.image_size, device, cfg.eval.batch_size)
    return mean_average_precision(q, d, data.labels[val_idx], data.labels[fit_idx])
