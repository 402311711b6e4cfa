"""End to end on real Fashion-MNIST: train -> checkpoint -> encode -> evaluate, through the library and the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

import attnhash
from attnhash.config import build_config
from attnhash.data import prepare_data
from attnhash.evaluation.run import evaluate_run
from attnhash.inference import encode_indices, pick_device
from attnhash.methods.base import create_method
from attnhash.metrics import mean_average_precision
from attnhash.provenance import code_version
from attnhash.training import seed_everything, train

SMALL = [
    "data.image_size=32", "data.train_limit=1000", "data.query_limit=200", "data.database_limit=2000",
    "model.backbone=efficientnet_lite0", "model.freeze=block5", "model.bits=32",
    "train.epochs=6", "train.batch_size=32", "optim.lr=0.001", "optim.backbone_lr_scale=1.0",
]


@pytest.fixture(scope="module")
def trained_run(fmnist, tmp_path_factory):
    cfg = build_config("dpsh", overrides=SMALL)
    run_dir = tmp_path_factory.mktemp("runs") / "dpsh-small"
    result = train(cfg, run_dir=run_dir, progress=False, log=lambda m: None)
    return cfg, result


def untrained_map(cfg) -> float:
    """mAP of the same network before training (same seed: the pretrained backbone + a random hash layer)."""
    data = prepare_data(cfg.data)
    seed_everything(cfg.train.seed)
    method = create_method("dpsh", cfg.method.params, cfg.model.bits, data.num_classes, len(data.train))
    net = method.build_network(cfg.model)
    dev = pick_device("cpu")
    q = encode_indices(net, data.source, data.query, cfg.data.image_size, dev)
    d = encode_indices(net, data.source, data.database, cfg.data.image_size, dev)
    return mean_average_precision(q, d, data.labels[data.query], data.labels[data.database])


def test_training_beats_the_untrained_network(trained_run):
    cfg, result = trained_run
    metrics, summary = evaluate_run(result.run_dir, progress=False)
    before = untrained_map(cfg)
    assert metrics.mAP > before + 0.15, (before, metrics.mAP)
    assert summary["num_queries"] == 200 and summary["num_database"] == 2000 and summary["topk"] is None
    for name in ("model.safetensors", "config.yaml", "log.jsonl", "meta.json", "metrics.json", "codes.npz",
                 "plots/pr_curve.png", "plots/precision_at_n.png"):
        assert (result.run_dir / name).exists(), name
    log = [json.loads(line) for line in (result.run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5, 6] and log[-1]["loss"] < log[0]["loss"]
    # the code that made the run is recorded with its metrics (the package version, and the commit in a checkout)
    assert summary["code"] == code_version() and summary["code"].startswith(attnhash.__version__)


def test_cli_evaluate_json_matches_library(trained_run):
    _, result = trained_run
    out = subprocess.run([sys.executable, "-m", "attnhash", "evaluate", str(result.run_dir), "--json", "--no-plots"],
                         capture_output=True, text=True, check=True)
    cli = json.loads(out.stdout)
    lib = json.loads((result.run_dir / "metrics.json").read_text())
    assert cli["mAP"] == pytest.approx(lib["mAP"], abs=1e-12)


def test_cli_evaluate_codes_file(tmp_path):
    rng = np.random.default_rng(0)
    q, d = rng.choice([-1, 1], size=(20, 16)), rng.choice([-1, 1], size=(100, 16))
    ql, dl = rng.integers(0, 3, 20), rng.integers(0, 3, 100)
    path = tmp_path / "codes.npz"
    np.savez(path, query_codes=q, db_codes=d, query_labels=ql, db_labels=dl)
    out = subprocess.run([sys.executable, "-m", "attnhash", "evaluate", "--codes", str(path), "--topk", "50", "--json"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["mAP"] == pytest.approx(mean_average_precision(q, d, ql, dl, topk=50), abs=1e-12)
