"""Distributed training on PyTorch's own engine: torchrun with 2 gloo processes trains DPSH and DPFAH, the
model encodes, a world of 1 equals the plain run, and a killed torchrun job resumes to the same weights."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from attnhash.inference import Encoder

TINY = ["--dataset", "fmnist", "--train-limit", "192", "--epochs", "2", "--batch-size", "16", "--bits", "16",
        "--image-size", "32", "--backbone", "resnet18", "--weights", "none", "-q"]


def torchrun(nproc: int, *args, wait: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "attnhash", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_job(job: subprocess.Popen) -> int:
    """kill -9 a torchrun job as a dying machine would: torchrun and its workers at once. torchrun starts each
    worker in its own session, so killing torchrun (or its process group) leaves them training on, writing the
    run folder while the resumed job trains in it."""
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True,
                                              text=True).stdout.split()]
    for pid in [job.pid, *workers]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    job.wait()
    deadline = time.time() + 60
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in workers), "a worker outlived kill -9"
    return len(workers)


def same_weights(a, b) -> bool:
    wa, wb = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("method", ["dpsh", "dpfah"])
def test_two_gloo_processes_train_a_model_that_encodes(method, fmnist, tmp_path):
    torchrun(2, "train", "--method", method, *TINY, "--name", "ddp", "--out", str(tmp_path))
    run = tmp_path / "ddp"
    log = (run / "log.jsonl").read_text().splitlines()
    assert len(log) == 2  # one writer: the first process
    assert load_file(run / "model.safetensors")  # and a complete checkpoint
    codes = Encoder(run, device="cpu").encode_source(fmnist, np.arange(50), progress=False)
    assert codes.shape == (50, 2) and len(np.unique(codes, axis=0)) > 1


def test_a_world_of_one_equals_the_plain_run(fmnist, tmp_path):
    torchrun(1, "train", "--method", "dpsh", *TINY, "--name", "one", "--out", str(tmp_path))
    plain = subprocess.run([sys.executable, "-m", "attnhash", "train", "--method", "dpsh", *TINY, "--name", "plain",
                            "--out", str(tmp_path)], env={**os.environ, "OMP_NUM_THREADS": "1"},  # same threads
                           capture_output=True, text=True, timeout=900)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert same_weights(tmp_path / "one", tmp_path / "plain")


def test_a_killed_torchrun_job_resumes_to_the_same_weights(fmnist, tmp_path):
    args = ["--method", "dpsh", *TINY[:5], "3", *TINY[6:]]  # three epochs
    torchrun(2, "train", *args, "--name", "whole", "--out", str(tmp_path))
    job = torchrun(2, "train", *args, "--name", "cut", "--out", str(tmp_path), wait=False)
    state = tmp_path / "cut" / "train_state.safetensors"
    deadline = time.time() + 600
    while not state.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed = kill_job(job)
    if (tmp_path / "cut" / "model.safetensors").exists():
        pytest.skip("the job finished before it could be killed")
    assert killed == 2  # both workers were running, and are gone
    torchrun(2, "train", "--resume", str(tmp_path / "cut"), "-q")
    assert same_weights(tmp_path / "whole", tmp_path / "cut")


def test_shallow_methods_refuse_torchrun(tmp_path):
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           "-m", "attnhash", "train", "--method", "itq", "--name", "x", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "itq is a shallow method" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("method", ["csq", "dbdh", "dfh", "dhida", "dhn", "dsdh", "dsh", "ega", "greedyhash",
                                    "greedyhash_unsup", "hashnet", "idhn", "lcdsh", "ssdh", "uhga"])
def test_every_deep_method_trains_in_two_processes(method, fmnist, tmp_path):
    """The methods not covered above: each trains under 2 gloo processes (its shared state gathered)."""
    torchrun(2, "train", "--method", method, *TINY, "--weights", "auto", "--backbone", "efficientnet_lite0",
             "--name", method, "--out", str(tmp_path))
    assert (tmp_path / method / "model.safetensors").exists()


def test_dfh_with_per_batch_centres_refuses_torchrun(tmp_path):
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           "-m", "attnhash", "train", "--method", "dfh", *TINY, "--set",
                           "method.params.center_update=batch", "--name", "x", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "center_update=batch moves the class centres" in done.stderr
