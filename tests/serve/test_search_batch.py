"""The service's batch search endpoint and the ranking of ties by score, with a real (tiny) run."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from attnhash.cli import main
from attnhash.inference import Encoder
from attnhash.serve import create_app
from index_fixtures import make_tiny_run, write_image_folder

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    images = write_image_folder(str(root / "images"), n=50)
    if not images:
        pytest.skip("Fashion-MNIST (Debian dataset-fashion-mnist) not installed")
    run = make_tiny_run(str(root / "run"), seed=0)
    idx = root / "b.idx"
    assert main(["index", "build", str(run), "--images", str(root / "images"), "--out", str(idx)]) == 0
    client = TestClient(create_app(str(idx), persist=False), base_url="http://127.0.0.1")
    return client, images, run


def _png(path):
    with open(path, "rb") as f:
        return f.read()


def test_batch_answers_each_query_as_a_single_search_would(served):
    client, images, _ = served
    files = [("images", (f"q{i}.png", _png(images[i]), "image/png")) for i in (2, 9, 30)]
    for rerank in ("false", "true"):
        body = client.post("/api/search/batch", files=files, data={"ids": ["4"], "k": "12", "rerank": rerank})
        assert body.status_code == 200, body.text
        answers = body.json()["results"]
        assert [a["query"].get("filename") for a in answers] == ["q2.png", "q9.png", "q30.png", None]
        for (_, (name, data, mime)), answer in zip(files, answers):
            single = client.post("/api/search", files={"image": (name, data, mime)},
                                 data={"k": "12", "rerank": rerank}).json()
            # (a batch's outputs differ from a single image's in the last float digits: scores compared loosely)
            assert [(h["id"], h["distance"]) for h in answer["results"]] == \
                [(h["id"], h["distance"]) for h in single["results"]]
            np.testing.assert_allclose([h.get("score", 0) for h in answer["results"]],
                                       [h.get("score", 0) for h in single["results"]], atol=1e-4)
            assert answer["query"]["code"] == single["query"]["code"]
            assert ("score" in answer["results"][0]) == (rerank == "true")
        by_id = client.get("/api/search/by-id/4", params={"k": 12}).json()
        assert answers[3]["results"] == by_id["results"]


def test_rerank_orders_ties_by_score(served):
    client, images, run = served
    from PIL import Image

    from attnhash.codes import unpack_codes
    from attnhash.index import open_index

    z = Encoder(run).encode_images_with_outputs([np.asarray(Image.open(images[2]).convert("RGB"))])[1][0]
    hits = client.post("/api/search", files={"image": ("q.png", _png(images[2]), "image/png")},
                       data={"radius": "3", "rerank": "true"}).json()["results"]
    assert len(hits) > 1
    keys = [(h["distance"], -h["score"]) for h in hits]
    assert keys == sorted(keys)
    index = open_index(client.app.state.service.index_path)
    b = unpack_codes(index.reconstruct([h["id"] for h in hits])).astype(np.float64)
    np.testing.assert_allclose([h["score"] for h in hits], b @ np.tanh(z.astype(np.float64)), atol=1e-4)


def test_batch_limits_and_errors(served):
    client, images, _ = served
    assert client.post("/api/search/batch", data={"k": "3"}).status_code == 422
    r = client.post("/api/search/batch", data={"ids": ["99999"], "k": "3"})
    assert r.status_code == 404 and "99999" in r.json()["detail"]
    r = client.post("/api/search/batch", data={"ids": [str(i % 50) for i in range(300)], "k": "3"})
    assert r.status_code == 422 and "at most 256" in r.json()["detail"]
    stats = client.get("/api/stats").json()
    assert stats["max_batch"] == 256 and stats["search"]["compiled"] in (True, False)


def test_encoder_outputs_give_its_codes(served):
    _, images, run = served
    from PIL import Image

    enc = Encoder(run)
    pics = [np.asarray(Image.open(p).convert("RGB")) for p in images[:20]]
    codes, z = enc.encode_images_with_outputs(pics)
    np.testing.assert_array_equal(codes, enc.encode_images(pics))
    assert z.shape == (20, enc.bits) and z.dtype == np.float32
