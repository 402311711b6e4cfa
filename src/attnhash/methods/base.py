"""What a hashing method is, for the generic trainer.

A method is a loss plus, where it needs them, hooks: a network of its own shape (`network_spec`), state
prepared before training (`setup`: memory banks, similarity matrices, hash centres), a schedule
(`on_epoch_start`: continuation, two-stage training) or a training step of its own (`training_step`:
alternating updates, gradient attention with a look-ahead). The trainer calls these and knows nothing
about any particular method. Adding a method = one file in attnhash/methods/ + one recipe in
configs/methods/.

The method registry (`METHODS`) is the one catalogue of every method, deep or shallow: each entry carries its
kind (deep supervised, deep unsupervised, shallow), so "is this a method, and how is it trained?" has one
answer. Deep methods register with `@register_method`; the shallow hashers of attnhash.shallow are entered
by attnhash.methods.shallow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from attnhash.config import ModelConfig
from attnhash.errors import ConfigError
from attnhash.inference.distributed import SINGLE, Distributed
from attnhash.losses.pairwise import MemoryBank
from attnhash.models.network import HashingNetwork, NetworkSpec
from attnhash.registry import Registry


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
    # the processes of a distributed training (torchrun): gather batches into shared state with dist.all_gather
    dist: Distributed = SINGLE

    def memory_bank(self, bits: int) -> MemoryBank:
        """A bank of every training item's relaxed code, kept the same in every process."""
        return MemoryBank(self.num_train, bits, self.train_labels, gather=self.dist.all_gather if self.dist.active
                          else None)

    def gather(self) -> Callable[[Tensor], Tensor] | None:
        """What a method's own shared state (pairs, banks) gathers batches with: None in one process."""
        return self.dist.all_gather if self.dist.active else None

    @torch.no_grad()
    def collect_outputs(self, key: str) -> tuple[Tensor, Tensor]:
        """One pass over the training set in eval mode: (N x D) rows of network output `key` addressed by each
        batch's "index", and (N,) flags of the rows filled (the trainer drops a last batch of one item, so a row
        can stay unfilled). The network is put back in its previous mode afterwards."""
        was_training = self.network.training
        self.network.eval()
        rows: Tensor | None = None
        filled = torch.zeros(self.num_train, dtype=torch.bool, device=self.device)
        try:
            for batch in self.train_loader:
                out = self.dist.all_gather(self.forward(batch)[key].float())  # every process's share of the set
                if rows is None:
                    rows = torch.zeros(self.num_train, out.shape[1], device=self.device)
                index = self.dist.all_gather(batch["index"].to(self.device))
                rows[index] = out.to(self.device)
                filled[index] = True
        finally:
            self.network.train(was_training)
        if rows is None:
            raise ConfigError("the training set is empty")
        return rows, filled

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

    def network_spec(self, cfg: ModelConfig) -> NetworkSpec:
        """The network this method trains, fully resolved: saved with the checkpoint, so the encoder rebuilds
        the network from it without the method."""
        model = self.adjust_model_config(dataclasses.replace(cfg, attention_args=dict(cfg.attention_args)))
        return NetworkSpec(model=model, num_classes=self.num_classes if self.uses_classifier else 0)

    def build_network(self, cfg: ModelConfig) -> HashingNetwork:
        return self.network_spec(cfg).build()

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

    # ----- resuming ----------------------------------------------------------------------------------
    def training_state(self) -> dict[str, Any]:
        """Everything the method keeps between steps, for a checkpoint to resume from: its own module state
        (parameters, buffers) and every plain attribute (memory banks, centres, codes, stage flags, its own
        optimisers), found by walking the attributes (methods create such objects in `setup`)."""
        return {"module": self.state_dict(),
                "attributes": {k: v for k, v in ((k, _capture(v)) for k, v in vars(self).items()
                                                 if not k.startswith("_") and k not in _NOT_STATE) if v is not _SKIP}}

    def load_training_state(self, state: dict[str, Any], ctx: TrainContext) -> None:
        """Restore what `training_state` saved, into a method already set up for the same run; then
        `on_resume` re-applies what restoring values alone does not (frozen parameters, optimiser groups)."""
        self.load_state_dict(state["module"])
        for name, saved in state["attributes"].items():
            _restore(self, name, saved)
        self.on_resume(ctx)

    def on_resume(self, ctx: TrainContext) -> None:
        """After the method's state was restored, before the optimiser's: default nothing."""

    def distributed_refusal(self) -> str | None:
        """Why this method cannot train in several processes (torchrun), or None when it can: shared state
        (memory banks, pairs, similarity) is gathered from every process through TrainContext."""
        return None

    def trainable_parameters(self, network: HashingNetwork) -> list[dict]:
        """Optimizer parameter groups: backbone and the rest, so recipes can scale the backbone's lr."""
        backbone = [p for p in network.backbone.parameters() if p.requires_grad]
        head = [p for p in network.head_parameters() if p.requires_grad]
        own = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": head + own, "name": "head"}]
        if backbone:
            groups.append({"params": backbone, "name": "backbone"})
        return groups


# ----- the generic walk of a method's state --------------------------------------------------------------
_NOT_STATE = {"params", "training"}  # the config (rebuilt from the run's config) and nn.Module's mode flag
_SKIP = object()


def _capture(value: Any) -> Any:
    """A saveable copy of an attribute value (see runs.state for what saves), or _SKIP for modules (their state
    is in state_dict) and callables."""
    if isinstance(value, nn.Module) or callable(value) and not isinstance(value, torch.optim.Optimizer):
        return _SKIP
    if isinstance(value, torch.optim.Optimizer):
        return {"__optimizer__": value.state_dict()}
    if value is None or isinstance(value, (bool, int, float, str, Tensor)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_capture(v) for v in value]
        return _SKIP if any(v is _SKIP for v in items) else type(value)(items)
    if isinstance(value, dict):
        items = {k: _capture(v) for k, v in value.items()}
        return _SKIP if any(v is _SKIP for v in items.values()) else items
    if hasattr(value, "__dict__"):  # a plain object: a memory bank, a set of pairs, ...
        fields = {k: _capture(v) for k, v in vars(value).items()}
        return {"__object__": {k: v for k, v in fields.items() if v is not _SKIP}}
    return _SKIP


def _restore(owner: Any, name: str, saved: Any) -> None:
    current = getattr(owner, name, None)
    if isinstance(saved, dict) and "__optimizer__" in saved:
        current.load_state_dict(saved["__optimizer__"])
    elif isinstance(saved, dict) and "__object__" in saved:
        if current is None:
            raise ConfigError(f"cannot resume: {type(owner).__name__}.{name} was not created by setup()")
        for key, value in saved["__object__"].items():
            _restore(current, key, value)
    elif isinstance(saved, Tensor) and isinstance(current, Tensor):
        if current.shape == saved.shape and current.dtype == saved.dtype:
            current.copy_(saved)  # in place: other objects may hold the same tensor (the training labels)
        else:
            setattr(owner, name, saved.to(current.device))
    elif isinstance(current, set) and isinstance(saved, (list, set)):
        setattr(owner, name, set(saved))
    else:
        setattr(owner, name, saved)


# ----- registry --------------------------------------------------------------------------------------
DEEP_SUPERVISED, DEEP_UNSUPERVISED, SHALLOW = "deep supervised", "deep unsupervised", "shallow"


@dataclass(frozen=True)
class MethodEntry:
    """A method in the catalogue: its kind and the class that implements it (a Method subclass for deep
    methods, a ShallowHasher subclass for shallow ones)."""

    name: str
    kind: str  # DEEP_SUPERVISED | DEEP_UNSUPERVISED | SHALLOW
    impl: type
    paper: str = ""
    summary: str = ""

    @property
    def deep(self) -> bool:
        return self.kind != SHALLOW

    @property
    def supervised(self) -> bool:
        return self.kind == DEEP_SUPERVISED


METHODS: Registry[MethodEntry] = Registry("method", package="attnhash.methods")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator of a deep method: enters it in METHODS under its `name`."""
    if not cls.name:
        raise RuntimeError(f"{cls.__name__} has no name")
    kind = DEEP_SUPERVISED if cls.supervised else DEEP_UNSUPERVISED
    METHODS.register(cls.name, MethodEntry(cls.name, kind, cls, cls.paper, cls.summary))
    return cls


def method_class(name: str) -> type[Method]:
    """The Method subclass of a deep method (ConfigError for unknown names and for shallow methods)."""
    entry = METHODS.get(name)
    if not entry.deep:
        raise ConfigError(f"method '{entry.name}' is a shallow method: it is fitted on features, not trained")
    return entry.impl


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
