"""Flags shared by the commands that build a run configuration (train, experiment, demo)."""

from __future__ import annotations

import argparse

from attnhash.config import RunConfig, build_config


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that names a flag's default only where it has one (argparse's own adds "(default: None)")."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, [], False, argparse.SUPPRESS) and action.option_strings:
            text += " (default: %(default)s)"
        return text


def add_run_flags(p: argparse.ArgumentParser, method_required: bool = False) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--method", "-m", required=method_required, help="hashing method (see `attnhash methods`)")
    g.add_argument("--config", "-c", action="append", default=[], metavar="YAML",
                   help="YAML config file(s) applied over the method's recipe")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. --set optim.lr=1e-4 (repeatable)")
    g.add_argument("--name", help="run folder name (if unset: method-dataset-bits-backbone-time)")
    g.add_argument("--out", dest="out_dir", help="folder that holds run folders (if unset: runs)")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", "-d", help="fmnist, cifar10, cifar100, nuswide, imagenet100, or a path")
    d.add_argument("--root", help="where the dataset lives (for names that need it)")
    d.add_argument("--protocol", help="split protocol: auto (the dataset's own, or stratified for a path), stratified "
                   "(per class: --set data.split_query=0.1 data.split_train=0.5), fmnist, cifar10, cifar10-1, "
                   "nuswide21, imagenet100")
    d.add_argument("--strict", action="store_true", default=None,
                   help="stop at the first unreadable image (default: skip it and list it in the run's skipped.tsv)")
    d.add_argument("--image-size", type=int, help="network input size in pixels")
    d.add_argument("--train-limit", type=int, help="train on a seeded subset of this many training images")
    m = p.add_argument_group("model")
    m.add_argument("--bits", "-b", type=int, help="code length K >= 4 (12, 16, 24, 32, 48, 64, 128, ...)")
    m.add_argument("--backbone", help="resnet18, resnet34, resnet50, alexnet, efficientnet_lite0")
    m.add_argument("--weights", help="auto | imagenet | none | PATH to a torchvision-format state dict")
    m.add_argument("--freeze", help="freeze the backbone up to and including this stage (e.g. layer3, block5, all)")
    m.add_argument("--ablate", help="comma-separated parts of the method to switch off (see `attnhash methods`)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", "-e", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto | cpu | cuda")
    _show_config_defaults(p)


# flag -> the config value it sets, whose default the help shows (argparse itself has none: unset flags leave
# the config's layers alone)
_CONFIG_OF_FLAG = {"method": "method.name", "out_dir": "out_dir", "dataset": "data.dataset", "protocol": "data.protocol",
                   "image_size": "data.image_size", "bits": "model.bits", "backbone": "model.backbone",
                   "weights": "model.weights", "freeze": "model.freeze", "epochs": "train.epochs",
                   "batch_size": "train.batch_size", "lr": "optim.lr", "seed": "train.seed", "device": "train.device"}


def _show_config_defaults(p: argparse.ArgumentParser) -> None:
    defaults = RunConfig().to_dict()
    for action in p._actions:
        path = _CONFIG_OF_FLAG.get(action.dest)
        if path is None:
            continue
        value = defaults
        for part in path.split("."):
            value = value[part]
        recipe = "" if action.dest in ("method", "out_dir", "dataset", "device") else "; a method's recipe may set it"
        action.help = f"{action.help or ''} (default: {value}{recipe})".strip()


def config_from_args(args: argparse.Namespace) -> RunConfig:
    dataset = args.dataset
    protocol = args.protocol
    flags = {
        "name": args.name,
        "out_dir": args.out_dir,
        "data": {"dataset": dataset, "root": args.root, "protocol": protocol, "image_size": args.image_size,
                 "train_limit": args.train_limit, "strict": args.strict},
        "model": {"bits": args.bits, "backbone": args.backbone, "weights": args.weights, "freeze": args.freeze},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed, "device": args.device},
        "optim": {"lr": args.lr},
        "method": {"ablate": [a for a in args.ablate.split(",") if a] if args.ablate else None},
    }
    cfg = build_config(args.method, args.config, flags, args.overrides)
    check_method_name(cfg.method.name)
    return cfg


def check_method_name(name: str) -> None:
    """ConfigError naming the closest known methods unless `name` is a method (deep or shallow)."""
    from attnhash.methods import METHODS

    METHODS.get(name)
