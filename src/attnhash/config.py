"""Run configuration: typed sections, YAML recipes, dotted command-line overrides.

A run's configuration is built in layers, each overriding the one before:
defaults (the dataclasses below) <- the method's recipe (configs/methods/<method>.yaml, the paper's
hyperparameters) <- a user YAML file (--config) <- command-line flags <- `--set section.key=value` overrides.
The full result is saved with every checkpoint, so a run folder alone says how it was made.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from attnhash.codes import MIN_BITS
from attnhash.errors import ConfigError

SUPPORTED_BITS = (8, 16, 24, 32, 48, 64, 96, 128, 256)


@dataclass
class DataConfig:
    dataset: str = "fmnist"  # a dataset name (fmnist, cifar10, nuswide, imagenet100) or a path
    root: str | None = None  # where the dataset lives, for names that need it
    # query/train/database split protocol (DESIGN.md section 4); auto: the dataset's own (fmnist, cifar10,
    # nuswide21, imagenet100), or "stratified" for any other data
    protocol: str = "auto"
    split_seed: int = 0
    split_file: str | None = None  # default: the cache folder (never the data folder)
    # the stratified protocol, per class: a fraction (< 1) or a count (>= 1) of query and train items
    split_query: float = 0.1
    split_train: float = 0.5
    train_in_database: str = "auto"  # auto (yes when a class has fewer than 3 images) | yes | no
    strict: bool = False  # stop at the first unreadable image instead of skipping and reporting it
    image_size: int = 64  # network input side in pixels
    augment: bool = False  # random flip + crop on training images
    train_limit: int | None = None  # use only this many training images (quick runs, tests)
    query_limit: int | None = None  # evaluate on only this many queries
    database_limit: int | None = None  # and this many database items


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    weights: str = "auto"  # auto | imagenet | none | PATH to a state dict
    freeze: str | None = None  # freeze the backbone up to and including this stage ("all" = whole backbone)
    output_stride: int = 32  # 16: the last downsampling is skipped, a larger final map for attention
    bits: int = 64
    attention: str | None = None  # attention module name (see attnhash.models.attention)
    attention_placement: str = "output"  # output: on the last feature map | blocks: inside every residual block
    attention_args: dict = field(default_factory=dict)
    hidden: int = 0  # width of a hidden layer before the hash layer (0 = a single linear hash layer)
    dropout: float = 0.0


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw | sgd | rmsprop
    lr: float = 1e-3
    backbone_lr_scale: float = 1.0  # multiplier of lr for the (unfrozen) backbone parameters
    weight_decay: float = 1e-5
    momentum: float = 0.9
    schedule: str = "constant"  # constant | step | cosine
    step_size: int = 10  # epochs, for the step schedule
    gamma: float = 0.1
    grad_clip: float | None = None


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    num_workers: int = 0
    # Frozen backbone stages run once and training uses their cached output: "memory" (this run's training
    # images), "disk" (every image of the dataset, shared by all runs with the same frozen prefix, also used
    # to encode the query and database sets), or "off".
    frozen_cache: str = "memory"
    amp: str = "none"  # none | bf16 (autocast; faster on CPUs with AMX and on GPUs)
    select: str = "last"  # last: keep the last epoch | val: keep the best epoch on a held-out part of train
    val_fraction: float = 0.1
    channels_last: bool = True


@dataclass
class EvalConfig:
    topk: int | None = None  # mAP@R cut; None = the protocol's own (ALL, 5000, 1000)
    tie_aware: bool = True
    batch_size: int = 256


@dataclass
class MethodConfig:
    name: str = "dpsh"
    params: dict = field(default_factory=dict)  # checked against the method's own Params dataclass
    ablate: list = field(default_factory=list)  # parts of the method to switch off (method-specific names)


@dataclass
class RunConfig:
    name: str | None = None
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method: MethodConfig = field(default_factory=MethodConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _merge_into(obj, values: dict, where: str, prefix: str = "") -> None:
    """Write a nested dict into dataclass `obj`, refusing unknown keys (typos must not pass silently).
    `where` names the layer (a file, --set ...), `prefix` the dotted path of `obj` inside the config."""
    if not isinstance(values, dict):
        what = f"'{prefix[:-1]}' is a section: " if prefix else ""
        raise ConfigError(f"{where}: {what}expected a mapping of keys, got {type(values).__name__} {values!r}")
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), list(names), n=1, cutoff=0.6)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"{where}: unknown config key '{prefix}{key}'{hint} (known in "
                              f"{prefix[:-1] or 'the config'}: {', '.join(names)})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge_into(current, value, where, f"{prefix}{key}.")
        elif isinstance(current, dict) and isinstance(value, dict) and key != "attention_args":
            merged = dict(current)
            merged.update(value)
            setattr(obj, key, merged)
        else:
            setattr(obj, key, copy.deepcopy(value))


# The protocol a named dataset is evaluated with by default; any other data (a path) gets "stratified".
NATURAL_PROTOCOLS = {"fmnist": "fmnist", "cifar10": "cifar10", "nuswide": "nuswide21", "imagenet100": "imagenet100"}


def _coerce(cfg: RunConfig) -> None:
    """Type-check the scalar fields that come from YAML or strings."""

    def check(obj, where):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                check(value, f"{where}.{f.name}")
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            if value is None or default is None:
                continue
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"{where}.{f.name}: expected true/false, got {value!r}")
            elif isinstance(default, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ConfigError(f"{where}.{f.name}: expected an integer, got {value!r}")
            elif isinstance(default, float):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    value = float(value)
                else:
                    raise ConfigError(f"{where}.{f.name}: expected a number, got {value!r}")
            elif isinstance(default, str) and not isinstance(value, str):
                value = str(value)
            setattr(obj, f.name, value)

    check(cfg, "config")
    if cfg.data.protocol == "auto":
        cfg.data.protocol = NATURAL_PROTOCOLS.get(cfg.data.dataset, "stratified")
    if cfg.model.bits < MIN_BITS:
        raise ConfigError(f"model.bits must be at least {MIN_BITS} (e.g. 12, 16, 24, 32, 48, 64, 128), got {cfg.model.bits}")
    if cfg.data.image_size < 16:
        raise ConfigError(f"data.image_size must be at least 16 pixels, got {cfg.data.image_size}")
    for name, value in (("train.epochs", cfg.train.epochs), ("train.batch_size", cfg.train.batch_size)):
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    choices = {
        "optim.name": (cfg.optim.name, ("adam", "adamw", "sgd", "rmsprop")),
        "optim.schedule": (cfg.optim.schedule, ("constant", "step", "cosine")),
        "train.select": (cfg.train.select, ("last", "val")),
        "train.amp": (cfg.train.amp, ("none", "bf16")),
        "train.frozen_cache": (cfg.train.frozen_cache, ("memory", "disk", "off")),
        "model.attention_placement": (cfg.model.attention_placement, ("output", "blocks")),
    }
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    if isinstance(cfg.method.ablate, str):
        cfg.method.ablate = [a for a in cfg.method.ablate.split(",") if a]


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=1e-4' -> (['optim', 'lr'], 0.0001); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': cannot parse value ({err.problem})") from None
    if isinstance(value, str) and _looks_numeric(value):
        value = float(value)  # YAML 1.1 reads '1e-4' as a string
    return key.strip().split("."), value


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _nest(path: list[str], value) -> dict:
    out: dict = value
    for part in reversed(path):
        out = {part: out}
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections")
    return data


def method_recipe(method: str) -> dict:
    """The packaged recipe configs/methods/<method>.yaml (the paper's hyperparameters), or {}."""
    ref = resources.files("attnhash") / "configs" / "methods" / f"{method}.yaml"
    if not ref.is_file():
        return {}
    data = yaml.safe_load(ref.read_text()) or {}
    data.pop("paper", None)  # documentation only
    return data


def build_config(
    method: str | None = None,
    config_files: list[str] | None = None,
    flags: dict | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Assemble a RunConfig from the layers described in the module docstring.

    `flags` is a nested dict of explicitly given command-line values (None values are ignored).
    """
    cfg = RunConfig()
    layers: list[tuple[str, dict]] = []
    user = [(str(p), load_yaml(p)) for p in (config_files or [])]
    name = method or next((d.get("method", {}).get("name") for _, d in reversed(user) if d.get("method")), None)
    name = name or cfg.method.name
    recipe = method_recipe(name)
    if recipe:
        layers.append((f"recipe {name}.yaml", recipe))
    layers.extend(user)
    if flags:
        layers.append(("command line", _drop_none(flags)))
    for text in overrides or []:
        path, value = parse_override(text)
        layers.append((f"--set {text}", _nest(path, value)))
    layers.append(("method", {"method": {"name": name}}))
    for where, values in layers:
        _merge_into(cfg, values, where)
    _coerce(cfg)
    return cfg


def _drop_none(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


def config_from_dict(data: dict) -> RunConfig:
    """Rebuild a RunConfig saved with a checkpoint (no recipe layering: the saved dict is complete)."""
    cfg = RunConfig()
    _merge_into(cfg, data, "saved config")
    _coerce(cfg)
    return cfg
