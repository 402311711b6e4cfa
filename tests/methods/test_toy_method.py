"""Adding a method is one file and one YAML recipe, and nothing else: a toy method dropped into a copy of the
package trains from the command line with its recipe's settings, and its run encodes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import attnhash

TOY = '''"""Toy: a pairwise likelihood on the batch, no quantisation term (a test of the plug-in contract)."""

from dataclasses import dataclass

from attnhash.losses.pairwise import label_similarity, pairwise_likelihood
from attnhash.methods.base import Method, register_method


@dataclass
class ToyParams:
    scale: float = 0.5


@register_method
class Toy(Method):
    name = "toy"
    paper = "none: the plug-in contract's test"
    summary = "pairwise likelihood within the batch"
    Params = ToyParams

    def loss(self, out, batch, ctx):
        u = out["z"].tanh()
        loss = pairwise_likelihood(u, u, label_similarity(batch["label"], batch["label"]), self.params.scale)
        return loss, {}
'''

RECIPE = """paper: none
method:
  params: {scale: 0.25}
model: {backbone: resnet18, weights: none, bits: 24}
"""


def test_a_method_is_one_file_and_one_recipe(tmp_path, fmnist):
    package = tmp_path / "site" / "attnhash"
    shutil.copytree(Path(attnhash.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "methods" / "toy.py").write_text(TOY)
    (package / "configs" / "methods" / "toy.yaml").write_text(RECIPE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}

    def attnhash_cli(*args):
        done = subprocess.run([sys.executable, "-m", "attnhash", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "toy" in attnhash_cli("methods")
    config = attnhash_cli("train", "--method", "toy", "--print-config")
    assert "scale: 0.25" in config and "bits: 24" in config  # the recipe is found and applied
    attnhash_cli("train", "--method", "toy", "--dataset", "fmnist", "--name", "toy", "--out", "runs", "-q",
                 "--epochs", "1", "--train-limit", "32", "--image-size", "32", "--batch-size", "16")
    out = attnhash_cli("encode", "runs/toy", "--images", "fmnist", "--subset", "query", "--out", "toy.npz")
    assert "1000 codes of 24 bits (3 bytes each)" in out
