"""The HTTP API with FastAPI's test client (and a real loopback server for the concurrency test)."""

from __future__ import annotations

import io
import os
import re
import threading

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_helpers import AUTH, TOKEN, local_client, make_index_file, png_bytes

from attnhash.errors import IndexFileError
from attnhash.index import open_index
from attnhash.serve import BackgroundServer, create_app
from attnhash.serve.batching import MicroBatcher
from index_fixtures import FakeEncoder, fmnist_images, make_tiny_run, write_image_folder


@pytest.fixture(scope="module")
def images():
    data = fmnist_images(120)
    if data is None:
        pytest.skip("Fashion-MNIST (Debian dataset-fashion-mnist) not installed")
    return data


@pytest.fixture
def served(tmp_path):
    """An index of 100 real images (as PNG files) built with the fake encoder, and a test client on it."""
    path, enc, _ = make_index_file(tmp_path)
    index = open_index(path)
    app = create_app(path, encoder=enc, max_upload_mb=0.5, token=TOKEN)
    yield local_client(app), path, enc, index
    app.state.service.close()


def test_health_stats_and_page(served):
    client, path, enc, index = served
    assert client.get("/api/health").json() == {"status": "ok", "count": 100, "model_loaded": True}
    stats = client.get("/api/stats").json()
    assert (stats["count"], stats["bits"], stats["backend"]) == (100, 64, "faiss")
    assert stats["fingerprint"] == enc.fingerprint and stats["class_names"][3] == "class3"
    page = client.get("/")
    assert page.status_code == 200 and 'id="file-input"' in page.text and "/static/app.js" in page.text
    assert "fetch(" in client.get("/static/app.js").text
    for asset in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", asset)  # works offline: nothing from a CDN


def test_search_by_image_matches_the_index(served, images):
    client, _, enc, index = served
    pics, labels = images
    r = client.post("/api/search", files={"image": ("q.png", png_bytes(pics[5]), "image/png")}, data={"k": "7"})
    assert r.status_code == 200, r.text
    body = r.json()
    hits = body["results"]
    d, ids = index.search(enc.encode_images([pics[5]]), 7)
    assert [h["id"] for h in hits] == ids[0].tolist() and [h["distance"] for h in hits] == d[0].tolist()
    assert hits[0]["id"] == 5 and hits[0]["distance"] == 0
    assert hits[0]["label_names"] == [f"class{labels[5]}"] and hits[0]["thumbnail"] == "/api/items/5/image"
    assert body["query"]["code"] == enc.encode_images([pics[5]])[0].tobytes().hex()

    r = client.post("/api/search", files={"image": ("q.png", png_bytes(pics[5]), "image/png")}, data={"radius": "12"})
    hits = r.json()["results"]
    ref = index.range_search(enc.encode_images([pics[5]]), 12)[0]
    assert [h["id"] for h in hits] == ref[1].tolist() and all(h["distance"] <= 12 for h in hits)

    # a JPEG of another (unindexed) real image works too
    buf = io.BytesIO()
    Image.fromarray(pics[110]).convert("RGB").save(buf, format="JPEG")
    assert client.post("/api/search", files={"image": ("q.jpg", buf.getvalue(), "image/jpeg")}).status_code == 200


def test_search_by_id_and_item_endpoints(served):
    client, _, _, index = served
    hits = client.get("/api/search/by-id/12", params={"k": 4}).json()["results"]
    d, ids = index.search(index.reconstruct([12]), 4)
    assert [h["id"] for h in hits] == ids[0].tolist() and hits[0]["id"] == 12
    assert client.get("/api/search/by-id/999").status_code == 404
    item = client.get("/api/items/12").json()
    assert item["path"].endswith("12.png") and item["label_names"]
    thumb = client.get("/api/items/12/image", params={"size": 64})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumb.content)).size == (28, 28)  # never enlarged
    assert client.get("/api/items/999/image").status_code == 404


def test_radius_tables_built_at_start(served):
    _, path, enc, index = served
    client = local_client(create_app(path, encoder=enc, radius_tables=True, token=None))
    for _ in range(200):
        if client.get("/api/stats").json()["radius_tables"] == "built":
            break
        threading.Event().wait(0.05)
    assert client.get("/api/stats").json()["radius_tables"] == "built"
    hits = client.get("/api/search/by-id/12", params={"radius": 20}).json()["results"]
    ref = index.range_search(index.reconstruct([12]), 20)[0]
    assert [h["id"] for h in hits] == ref[1].tolist() and [h["distance"] for h in hits] == ref[0].tolist()


def test_rejects_bad_requests(served, images):
    client, _, _, _ = served
    pics, _ = images
    r = client.post("/api/search", files={"image": ("notes.txt", b"just some text", "text/plain")})
    assert r.status_code == 415 and "not an image" in r.json()["detail"]
    truncated = png_bytes(pics[0])[:60]
    assert client.post("/api/search", files={"image": ("t.png", truncated, "image/png")}).status_code == 415
    big = b"\x89PNG" + os.urandom(600_000)
    r = client.post("/api/search", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "upload limit of 0.5 MB" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is counted on the streamed body
        for _ in range(20):
            yield b"x" * 50_000

    r = client.post("/api/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413
    ok = png_bytes(pics[0])
    for params in ({"k": "0"}, {"k": "5000"}, {"radius": "99"}, {"k": "3", "radius": "2"}):
        r = client.post("/api/search", files={"image": ("q.png", ok, "image/png")}, data=params)
        assert r.status_code == 422, params
    assert client.post("/api/search").status_code == 422  # no image at all


def test_add_and_remove_persist_atomically(served, images, tmp_path):
    client, path, enc, _ = served
    pics, _ = images
    files = [("images", (f"n{i}.png", png_bytes(pics[100 + i]), "image/png")) for i in range(3)]
    r = client.post("/api/items", files=files, data={"labels": ["class2", "new-class", "class2,class4"]},
                    headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json() == {"ids": [100, 101, 102], "count": 103}
    on_disk = open_index(path)  # the file was rewritten before the reply
    assert len(on_disk) == 103
    assert on_disk.metadata([101])[0]["labels"] == [10] and on_disk.info["class_names"][10] == "new-class"
    assert on_disk.metadata([102])[0]["labels"] == [2, 4]
    uploaded = on_disk.metadata([100])[0]["path"]
    assert os.path.exists(uploaded) and client.get("/api/items/100/image").status_code == 200
    hits = client.post("/api/search", files={"image": ("q.png", png_bytes(pics[101]), "image/png")}).json()["results"]
    assert hits[0]["id"] == 101 and hits[0]["label_names"] == ["new-class"]

    assert client.delete("/api/items/100", headers=AUTH).json() == {"removed": 100, "count": 102}
    assert client.delete("/api/items/100", headers=AUTH).status_code == 404
    assert not os.path.exists(uploaded)  # the service's copy of the upload goes with the item
    assert 100 not in open_index(path) and len(open_index(path)) == 102
    r = client.post("/api/items", files=[("images", ("x.txt", b"no", "text/plain"))], headers=AUTH)
    assert r.status_code == 415 and len(open_index(path)) == 102


def test_model_mismatch_and_missing_model(served, images):
    client, path, _, _ = served
    client.app.state.service.close()  # the writer's lock: a second writing service on the file takes it
    with pytest.raises(IndexFileError, match="was built by model with fingerprint"):
        create_app(path, encoder=FakeEncoder(64, seed=5), token=TOKEN)
    # the recorded run folder does not exist: searches by id still work, by image get 503 with the reason
    client = local_client(create_app(path, token=None))
    assert client.get("/api/health").json()["model_loaded"] is False
    assert client.get("/api/search/by-id/3").status_code == 200
    r = client.post("/api/search", files={"image": ("q.png", png_bytes(images[0][0]), "image/png")})
    assert r.status_code == 503 and "fake-run" in r.json()["detail"]


def test_concurrent_searches_adds_and_removes(served, images):
    client, path, enc, _ = served
    client.app.state.service.close()
    pics, _ = images
    app = create_app(path, encoder=enc, token=TOKEN)
    errors: list[str] = []
    added: list[int] = []
    queries = [png_bytes(p) for p in pics[:16]]

    with BackgroundServer(app) as server:
        def reader(t: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                for j in range(12):
                    r = c.post("/api/search", files={"image": ("q.png", queries[(t + j) % 16], "image/png")},
                               data={"k": "10"})
                    if r.status_code != 200 or len(r.json()["results"]) != 10:
                        errors.append(f"search {r.status_code} {r.text[:80]}")
                    if c.get(f"/api/search/by-id/{j}").status_code != 200:
                        errors.append("by-id failed")

        def writer() -> None:
            with httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as c:
                for j in range(6):
                    r = c.post("/api/items", files=[("images", ("a.png", queries[j], "image/png"))])
                    if r.status_code != 201:
                        errors.append(f"add {r.status_code}")
                        continue
                    added.append(r.json()["ids"][0])
                    if j % 2 and c.delete(f"/api/items/{added.pop()}").status_code != 200:
                        errors.append("delete failed")

        threads = [threading.Thread(target=reader, args=(t,)) for t in range(6)] + [threading.Thread(target=writer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[:5]
    final = open_index(path)
    assert len(final) == 100 + len(added) == 103
    assert app.state.service.counters["searches"] == 6 * 12 * 2


def test_real_encoder_end_to_end(tmp_path):
    """The service on an index built by a real run (the Encoder code path, not the fake)."""
    from attnhash.cli import main

    paths = write_image_folder(str(tmp_path / "images"), n=30)
    if not paths:
        pytest.skip("Fashion-MNIST (Debian dataset-fashion-mnist) not installed")
    run = make_tiny_run(str(tmp_path / "run"))
    assert main(["index", "build", run, "--images", str(tmp_path / "images"), "--out", str(tmp_path / "r.idx")]) == 0
    client = local_client(create_app(str(tmp_path / "r.idx"), token=None))  # loads the run recorded in the index
    assert client.get("/api/health").json()["model_loaded"] is True
    with open(paths[4], "rb") as f:
        hits = client.post("/api/search", files={"image": ("q.png", f.read(), "image/png")},
                           data={"k": "5"}).json()["results"]
    assert hits[0]["distance"] == 0 and paths[4] in [h["path"] for h in hits if h["distance"] == 0]


def test_micro_batcher_batches_concurrent_requests_and_routes_results():
    sizes: list[int] = []
    gate = threading.Event()

    def encode(images):
        gate.wait(5)  # hold the first pass so the other requests queue up behind it
        if any(int(im[0, 0]) == 255 for im in images):
            raise ValueError("bad image")
        sizes.append(len(images))
        return np.array([[int(im[0, 0])] for im in images], dtype=np.uint8)

    batcher = MicroBatcher(encode, max_batch=8)
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            results[i] = batcher([np.full((2, 2), i, np.uint8), np.full((2, 2), i + 100, np.uint8)])
        except ValueError as err:
            results[i] = err

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    while sum(len(p.images) for p in batcher._queue) < 22:  # all but the running one are queued
        threading.Event().wait(0.01)
    gate.set()
    for t in threads:
        t.join()
    for i in range(12):
        assert results[i].tolist() == [[i], [i + 100]]  # each caller gets its own rows
    assert sum(sizes) == 24 and max(sizes) == 8 and len(sizes) <= 5  # 1 + ceil(22 / 8) passes
    # an error reaches the callers of its batch only; the batcher keeps working
    bad = threading.Thread(target=call, args=(155,))
    bad.start()
    bad.join()
    assert isinstance(results[155], ValueError)
    assert batcher([np.full((2, 2), 7, np.uint8)]).tolist() == [[7]]
