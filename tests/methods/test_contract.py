"""One contract over every method in the catalogue (as scikit-learn's check_estimator does for estimators):
trains a few steps, saves a run folder, is rebuilt by the Encoder from the checkpoint alone, gives packed
codes of the right shape and dtype, and gives the same weights and codes again under the same seed."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from attnhash.config import build_config
from attnhash.data import prepare_data
from attnhash.inference import Encoder
from attnhash.methods import METHODS, SHALLOW
from attnhash.runs import RunFolder
from attnhash.training import train

BITS = 16
SETTINGS = ["data.image_size=32", "data.train_limit=48", "data.query_limit=8", "data.database_limit=8",
            "model.weights=none", f"model.bits={BITS}", "train.epochs=1", "train.batch_size=16"]


@pytest.fixture(scope="module")
def tiny_data(fmnist):
    return prepare_data(build_config("dpsh", overrides=SETTINGS).data)


def test_the_catalogue_holds_every_kind():
    kinds = {name: entry.kind for name, entry in METHODS.items()}
    assert len(kinds) == 23
    assert {kinds[n] for n in ("dpfah", "dhida", "ega", "dpsh")} == {"deep supervised"}
    assert kinds["uhga"] == kinds["ssdh"] == "deep unsupervised"
    assert kinds["itq"] == kinds["density_sensitive"] == SHALLOW


@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract(name, tiny_data, tmp_path):
    entry = METHODS.get(name)
    cfg = build_config(name, overrides=SETTINGS)

    def fit(folder):
        result = train(cfg, run_dir=tmp_path / folder, progress=False, log=lambda m: None, data=tiny_data)
        return RunFolder(result.run_dir)

    first = fit("a")
    checkpoint = first.load_model()
    assert checkpoint.network["kind"] == ("deep" if entry.deep else "shallow")
    assert checkpoint.config.method.name == name
    assert [r["epoch"] for r in first.read_log()] == ([1] if entry.deep else [])  # one record per epoch

    encoder = Encoder(first.path, device="cpu")  # rebuilt from the checkpoint's spec, no method involved
    codes = encoder.encode_source(tiny_data.source, tiny_data.query, progress=False)
    assert codes.dtype == np.uint8 and codes.shape == (len(tiny_data.query), BITS // 8)
    assert encoder.bits == BITS

    second = fit("b")  # the same config and seed
    a, b = load_file(first.checkpoint_path), load_file(second.checkpoint_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = Encoder(second.path, device="cpu").encode_source(tiny_data.source, tiny_data.query, progress=False)
    np.testing.assert_array_equal(codes, again)
