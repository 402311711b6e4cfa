"""The Python API of the README: `import attnhash` then train, evaluate, load, build_index, open_index."""

import numpy as np
import pytest

import attnhash


def test_import_is_light_and_lists_the_api():
    assert set(attnhash.__all__) >= {"train", "evaluate", "load", "build_index", "open_index", "build_config",
                                     "list_methods", "__version__"}
    assert "dpfah" in attnhash.list_methods() and "itq" in attnhash.list_methods()
    with pytest.raises(AttributeError):
        attnhash.no_such_thing  # noqa: B018


def test_train_evaluate_load_index_search(fmnist, tmp_path):
    tiny = ["data.image_size=32", "data.train_limit=64", "data.query_limit=20", "data.database_limit=200",
            "model.backbone=resnet18", "model.weights=none", "train.batch_size=32"]
    run = attnhash.train("dpsh", dataset="fmnist", bits=16, epochs=1, overrides=tiny, run_dir=tmp_path / "run",
                         log=lambda m: None)
    result = attnhash.evaluate(run, plots=False)
    assert result["num_queries"] == 20 and result["num_database"] == 200 and 0 <= result["mAP"] <= 1
    encoder = attnhash.load(run)
    codes = encoder.encode_images([fmnist.image(0), fmnist.image(1)])
    assert codes.shape == (2, 2) and codes.dtype == np.uint8

    images = np.stack([fmnist.image(i) for i in range(30)])
    np.savez(tmp_path / "few.npz", images=images[..., 0], labels=np.asarray(fmnist.labels)[:30].argmax(1))
    built = attnhash.build_index(run, str(tmp_path / "few.npz"), out=str(tmp_path / "few.idx"))
    assert len(built.index) == 30
    opened = attnhash.open_index(str(tmp_path / "few.idx"))
    hits = opened.search_images([images[3]], k=5)[0]
    assert hits[0]["distance"] == 0 and len(hits) == 5 and 3 in [h["id"] for h in hits if h["distance"] == 0]
