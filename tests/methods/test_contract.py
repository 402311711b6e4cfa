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


@pytest.mark.parametrize("name", ["dpsh", "csq", "itq"])
def test_twelve_bit_codes_end_to_end(name, tiny_data, tmp_path):
    """The 12-bit column of the field's tables: codes packed in 2 bytes with zero padding, scored over radii
    0..12, indexed and searched."""
    from attnhash.evaluation.run import evaluate_run
    from attnhash.retrieval import Retriever

    cfg = build_config(name, overrides=[*SETTINGS, "model.bits=12"])
    result = train(cfg, run_dir=tmp_path / "run", progress=False, log=lambda m: None, data=tiny_data)
    metrics, summary = evaluate_run(result.run_dir, progress=False, plots=False)
    assert summary["bits"] == 12 and len(metrics.pr_radius) == 13 and 0 <= summary["mAP"] <= 1
    encoder = Encoder(result.run_dir, device="cpu")
    retriever = Retriever.create(encoder)
    retriever.add_source(tiny_data.source, tiny_data.database, progress=False)
    assert retriever.index.bits == 12 and retriever.index.code_size == 2
    hits = retriever.search_codes(retriever.index.reconstruct([0]), k=3)[0]
    assert hits[0]["distance"] == 0 and all(0 <= h["distance"] <= 12 for h in hits)
