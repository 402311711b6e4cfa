"""What a hashing method is, for the generic trainer.

A method is a loss plus, where it needs them, hooks: a network of its own shape (`build_network`), state
prepared before training (`setup`: memory banks, similarity matrices, hash centres), a schedule
(`on_epoch_start`: continuation, two-stage training) or a training step of its own (`training_step`:
alternating updates, gradient attention with a look-ahead). The trainer calls these and knows nothing
about any particular method. Adding a method = one file in attnhash/methods/ + one recipe in
configs/methods/.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from attnhash.config import ModelConfig
from attnhash.errors import ConfigError
from attnhash.models.network import HashingNetwork, build_network


@dataclass
class TrainContext:
    """What the trainer hands to a method's hooks."""

    network: HashingNetwork
    forward: Callable[[dict], dict]  # network outputs for a batch (handles cached frozen features)
    optimizer: torch.optim.Optimizer
    train_labels: Tensor  # (n_train, C) float multi-hot labels of the training set, on the device
    num_train: int
    epochs: int
    device: torch.device
    train_loader: Any = None  # iterable of batches, for methods that need a pass over the data in setup
    epoch: int = 0
    step: int = 0  # optimisation steps done so far
    steps_per_epoch: int = 0
    amp: bool = False  # bf16 autocast on
    grad_clip: float | None = None  # max gradient norm of the network's parameters (optim.grad_clip)
    log: Callable[[str], None] = print
    extras: dict = field(default_factory=dict)  # free space for a method's own bookkeeping

    def optimizer_step(self) -> None:
        """Clip the gradients (when configured) and take the optimizer step: call this instead of
        optimizer.step() in a method's own training_step, so clipping happens between backward and step."""
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
        self.optimizer.step()


class Method(nn.Module):
    """Base class. Subclasses set the class attributes and implement `loss`."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    supervised: ClassVar[bool] = True
    summary: ClassVar[str] = ""
    Params: ClassVar[type] = None  # a dataclass of the method's hyperparameters
    ablations: ClassVar[dict[str, str]] = {}  # name -> what switching it off removes
    uses_classifier: ClassVar[bool] = False  # the network gets a classification layer

    def __init__(self, params: Any, bits: int, num_classes: int, num_train: int, ablate: tuple[str, ...] = ()):
        super().__init__()
        self.params = params
        self.bits = bits
        self.num_classes = num_classes
        self.num_train = num_train
        self.ablate = set(ablate)

    # ----- network -----------------------------------------------------------------------------------
    def adjust_model_config(self, cfg: ModelConfig) -> ModelConfig:
        """Let a method switch its attention off for an ablation, etc. Default: unchanged."""
        return cfg

    def build_network(self, cfg: ModelConfig) -> HashingNetwork:
        cfg = self.adjust_model_config(dataclasses.replace(cfg))
        return build_network(cfg, num_classes=self.num_classes if self.uses_classifier else 0)

    # ----- training hooks ----------------------------------------------------------------------------
    def setup(self, ctx: TrainContext) -> None:
        """Once, before the first epoch."""

    def on_epoch_start(self, ctx: TrainContext) -> None:
        """At the start of every epoch (ctx.epoch is 0-based)."""

    def loss(self, out: dict[str, Tensor], batch: dict[str, Tensor], ctx: TrainContext) -> tuple[Tensor, dict]:
        """Loss of a batch and a dict of named float parts for the log."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, Tensor], ctx: TrainContext) -> dict[str, float]:
        """One optimisation step. Methods with alternating or look-ahead updates override this."""
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.amp):
            out = ctx.forward(batch)
        out = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in out.items()}
        loss, parts = self.loss(out, batch, ctx)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ctx.optimizer_step()
        return {"loss": float(loss.detach()), **parts}

    def trainable_parameters(self, network: HashingNetwork) -> list[dict]:
        """Optimizer parameter groups: backbone and the rest, so recipes can scale the backbone's lr."""
        backbone = [p for p in network.backbone.parameters() if p.requires_grad]
        head = [p for p in network.head_parameters() if p.requires_grad]
        own = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": head + own, "name": "head"}]
        if backbone:
            groups.append({"params": backbone, "name": "backbone"})
        return groups


# ----- registry --------------------------------------------------------------------------------------
_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise RuntimeError(f"{cls.__name__} has no name")
    if cls.name in _METHODS:
        raise RuntimeError(f"method '{cls.name}' registered twice")
    _METHODS[cls.name] = cls
    return cls


def _load_all() -> None:
    import importlib
    import pkgutil

    import attnhash.methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in ("base", "losses"):
            importlib.import_module(f"attnhash.methods.{info.name}")


def method_class(name: str) -> type[Method]:
    _load_all()
    if name not in _METHODS:
        from attnhash.shallow import SHALLOW_METHODS  # noqa: PLC0415 - shallow methods train differently

        known = sorted(_METHODS) + sorted(SHALLOW_METHODS)
        raise ConfigError(f"unknown method '{name}' (known: {', '.join(known)})")
    return _METHODS[name]


def available_methods() -> dict[str, type[Method]]:
    _load_all()
    return dict(sorted(_METHODS.items()))


def make_params(cls: type[Method], values: dict | None):
    """The method's Params dataclass filled from a dict (None: the defaults), refusing unknown names."""
    values = values or {}
    if cls.Params is None:
        if values:
            raise ConfigError(f"method '{cls.name}' takes no parameters (got {', '.join(values)})")
        return None
    names = {f.name for f in dataclasses.fields(cls.Params)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(
            f"method '{cls.name}': unknown parameter(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(names))})"
        )
    return cls.Params(**values)


def create_method(name: str, params: dict | None, bits: int, num_classes: int, num_train: int, ablate=()) -> Method:
    cls = method_class(name)
    unknown = set(ablate) - set(cls.ablations)
    if unknown:
        known = ", ".join(cls.ablations) or "none"
        raise ConfigError(f"method '{name}' cannot ablate {', '.join(sorted(unknown))} (it can: {known})")
    if cls.supervised and num_classes <= 0:
        raise ConfigError(f"method '{name}' is supervised and needs labels")
    return cls(make_params(cls, params), bits=bits, num_classes=num_classes, num_train=num_train, ablate=tuple(ablate))
