"""RunFolder: the one reader and writer of a run folder."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from attnhash.codefile import SplitCodes
from attnhash.config import build_config
from attnhash.errors import CheckpointError
from attnhash.runs import CHECKPOINT_FORMAT, RunFolder


def _save(folder: RunFolder):
    cfg = build_config("dpsh", overrides=["model.bits=16"])
    state = {"hash_layer.0.weight": torch.arange(6.0).reshape(2, 3)}
    network = {"kind": "deep", "model": cfg.to_dict()["model"], "num_classes": 0}
    return cfg, state, folder.save_model(state, cfg, network, {"num_classes": 10, "note": "é"})


def test_model_round_trip_and_the_human_copies(tmp_path):
    folder = RunFolder(tmp_path / "run")
    cfg, state, path = _save(folder)
    ck = folder.load_model()
    assert ck.path == path and torch.equal(ck.state["hash_layer.0.weight"], state["hash_layer.0.weight"])
    assert ck.config == cfg and ck.meta == {"num_classes": 10, "note": "é"} and ck.network["kind"] == "deep"
    assert ck.fingerprint == folder.fingerprint() and len(ck.fingerprint) == 64
    assert folder.saved_config() == json.loads(json.dumps(cfg.to_dict()))
    assert json.loads((folder.path / "meta.json").read_text())["note"] == "é"
    assert RunFolder(path).load_model().fingerprint == ck.fingerprint  # the checkpoint file itself works too


def test_refuses_missing_corrupted_foreign_and_old_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no such run folder"):
        RunFolder(tmp_path / "nothing").load_model()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        RunFolder(tmp_path / "empty").load_model()
    folder = RunFolder(tmp_path / "run")
    _save(folder)
    data = folder.checkpoint_path.read_bytes()
    folder.checkpoint_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        folder.load_model()
    for fmt, message in (("attnhash-checkpoint-1", "older attnhash without the network spec"),
                         ("something-else", "not an attnhash checkpoint")):
        save_file({"w": torch.zeros(1)}, str(folder.checkpoint_path), metadata={"format": fmt})
        with pytest.raises(CheckpointError, match=message):
            folder.load_model()
    assert CHECKPOINT_FORMAT.endswith("-2")


def test_log_codes_and_metrics(tmp_path):
    folder = RunFolder(tmp_path / "run").create()
    folder.start_training(build_config("dpsh"))
    assert folder.read_log() == [] and folder.load_config() == build_config("dpsh")
    folder.append_log({"epoch": 1, "loss": 0.5})
    folder.append_log({"epoch": 2, "loss": 0.25})
    assert [r["epoch"] for r in folder.read_log()] == [1, 2]
    folder.write_log([{"epoch": 1, "loss": 0.5}])  # a resume drops the record of an epoch done again
    assert [r["epoch"] for r in folder.read_log()] == [1]
    assert folder.load_train_state() is None
    folder.save_train_state({"epoch": 1, "weights": {"w": torch.ones(2)}, "groups": {0: [1, 2]}})
    state = folder.load_train_state()
    assert state["epoch"] == 1 and torch.equal(state["weights"]["w"], torch.ones(2)) and state["groups"] == {0: [1, 2]}
    folder.finish_training()
    assert folder.load_train_state() is None
    folder.save_train_state({"epoch": 3})
    folder.start_training(build_config("dsh"))  # a new training: the other's state is not this one's to resume
    assert folder.load_train_state() is None and folder.load_config() == build_config("dsh")
    codes = SplitCodes(np.zeros((2, 2), np.uint8), np.ones((3, 2), np.uint8), np.eye(2, dtype=np.uint8),
                       np.eye(3, 2, dtype=np.uint8), bits=16, topk=None, fingerprint="abc",
                       extra={"encode_images_per_s": 12.5})
    folder.save_codes(codes)
    cached = folder.load_codes("abc")
    assert cached is not None and cached.topk is None and cached.extra == {"encode_images_per_s": 12.5}
    np.testing.assert_array_equal(cached.db_codes, codes.db_codes)
    assert folder.load_codes("another model") is None  # codes of other weights are never reused
    assert folder.load_metrics() is None
    folder.save_metrics({"mAP": 0.5})
    assert folder.load_metrics() == {"mAP": 0.5}
    folder.forget_metrics()
    assert folder.load_metrics() is None
