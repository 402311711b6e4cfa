"""A killed training resumes to the very weights an uninterrupted run reaches (kill -9 at random points)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from attnhash.cli import main

SETTINGS = ["--dataset", "fmnist", "--train-limit", "384", "--epochs", "4", "--batch-size", "32", "--bits", "16",
            "--image-size", "32", "--backbone", "resnet18", "--weights", "none", "-q"]


def _weights(run):
    return load_file(os.path.join(run, "model.safetensors"))


def _train_cli(*args, out=subprocess.DEVNULL):
    return subprocess.Popen([sys.executable, "-m", "attnhash", "train", *args], stdout=out,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("method,extra", [("dpsh", []), ("ega", ["--set", "method.params.stage1_epochs=2"]),
                                          ("uhga", ["--backbone", "efficientnet_lite0", "--weights", "auto"])])
def test_kill_9_at_random_points_then_resume_gives_the_uninterrupted_weights(method, extra, fmnist, tmp_path):
    whole = str(tmp_path / "whole")
    t0 = time.time()
    proc = _train_cli("--method", method, *SETTINGS, *extra, "--name", "whole", "--out", str(tmp_path))
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()
    duration = time.time() - t0

    run = str(tmp_path / "killed")
    rng = np.random.default_rng(abs(hash(method)) % 2**32)
    kills, resumed_after = 0, []
    proc = _train_cli("--method", method, *SETTINGS, *extra, "--name", "killed", "--out", str(tmp_path))
    for _ in range(3):
        try:
            proc.wait(timeout=float(rng.uniform(0.4, 0.9)) * duration)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)  # anywhere: mid-epoch, mid-save, before the first epoch ends
            proc.wait()
            kills += 1
        if proc.stdout is not None:
            resumed_after += [line for line in proc.stdout.read().decode().splitlines() if "resuming" in line]
        if os.path.exists(os.path.join(run, "model.safetensors")):
            break
        proc = _train_cli("--resume", run, out=subprocess.PIPE)
    if not os.path.exists(os.path.join(run, "model.safetensors")):
        proc.wait(timeout=600)
        resumed_after += [line for line in proc.stdout.read().decode().splitlines() if "resuming" in line]
    assert os.path.exists(os.path.join(run, "model.safetensors")), proc.stderr.read().decode()
    assert kills >= 1 and resumed_after, "no kill landed after an epoch had finished"
    a, b = _weights(whole), _weights(run)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert not os.path.exists(os.path.join(run, "train_state.safetensors"))  # gone once the model is final
    assert main(["train", "--resume", run, "-q"]) == 2  # nothing left to resume


def test_resume_refuses_flags_and_unknown_folders(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no readable config.yaml" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--bits", "32"]) == 2
    assert "--resume continues with the run's own config; leave out --bits" in capsys.readouterr().err
