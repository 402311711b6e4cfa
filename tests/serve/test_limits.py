"""Bounded resources: decoded pixels per request and in all (large images read at reduced size), places for
concurrent requests (503 + Retry-After), thumbnails decoded once and cached per size, results per query."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from serve_helpers import AUTH, TOKEN, fmnist_test_images, local_client, make_index_file, png_bytes

from attnhash.data.images import REDUCING_GAP, decode_image_bytes, decode_image_reduced
from attnhash.data.loader import resize_image
from attnhash.serve import BackgroundServer, create_app
from attnhash.serve.limits import PixelBudget, SaturatedError, ServiceLimits


def zero_png(width: int, height: int) -> bytes:
    """A grey PNG of zeros, compressed while it is made: a 6000 x 6000 image (36 MP) is 35 KB."""
    comp = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    head = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def big_png():
    return zero_png(6000, 6000)


def photo_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 50, width // 50, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_large_images_are_decoded_at_reduced_size():
    # a 12-megapixel JPEG for a 32-pixel network: libjpeg decodes it at 1/8 scale
    data = photo_jpeg(4000, 3000)
    seen = []
    out = decode_image_reduced(data, "photo", (32, 32), admit=lambda n: (seen.append(n), _null())[1])
    assert seen == [500 * 375]  # decoded at 500 x 375 ...
    assert out.shape == (125, 100, 3)  # ... then shrunk by 5 x 3 to keep 3 x 32 pixels per side
    # the network's input is within a few grey levels of the full decode's
    full = resize_image(decode_image_bytes(data, "photo"), 32).astype(int)
    assert np.abs(resize_image(out, 32).astype(int) - full).mean() < 2.0
    # a 36 MP PNG is decoded whole (PNG has no reduced decode), then shrunk before the RGB conversion
    seen.clear()
    out = decode_image_reduced(zero_png(6000, 6000), "big", (32, 32), admit=lambda n: (seen.append(n), _null())[1])
    assert seen == [36_000_000] and out.shape[2] == 3
    assert 32 * REDUCING_GAP <= out.shape[0] == out.shape[1] < 2 * 32 * REDUCING_GAP
    # under `reduce_above` pixels nothing changes: the exact decode of the database images
    small = png_bytes(np.arange(64 * 48, dtype=np.uint8).reshape(48, 64))
    np.testing.assert_array_equal(decode_image_reduced(small, "s", (8, 8), reduce_above=10_000),
                                  decode_image_bytes(small, "s"))


def _null():
    from contextlib import nullcontext

    return nullcontext()


def test_pixel_budget_waits_in_order_and_refuses_after_waiting():
    budget = PixelBudget(100, wait_s=0.2)
    with budget.hold(80):
        t0 = time.monotonic()
        with pytest.raises(SaturatedError, match="decoding 80 pixels for other requests"):
            with budget.hold(30):
                pass
        assert time.monotonic() - t0 >= 0.2
        with budget.hold(20):  # fits beside
            assert budget.in_use == 100
    with pytest.raises(Exception, match="more than the service's budget of 100"):
        with budget.hold(101):
            pass
    # a waiter gets its pixels as soon as they are freed
    budget = PixelBudget(100, wait_s=5)
    held = budget.hold(90)
    held.__enter__()
    threading.Timer(0.2, lambda: held.__exit__(None, None, None)).start()
    t0 = time.monotonic()
    with budget.hold(50):
        assert 0.15 < time.monotonic() - t0 < 3
    assert budget.peak == 90 and budget.in_use == 0


def test_per_request_and_global_pixel_budgets(tmp_path, big_png):
    path, enc, _ = make_index_file(tmp_path)
    limits = ServiceLimits(request_pixels=20_000_000, global_pixels=40_000_000, wait_s=0.3)
    app = create_app(path, encoder=enc, token=TOKEN, limits=limits)
    client = local_client(app)
    svc = app.state.service
    r = client.post("/api/search", files={"image": ("big.png", big_png, "image/png")})
    assert r.status_code == 413 and "more than the 20,000,000 one request may use" in r.json()["detail"]
    ok = zero_png(4000, 4000)  # 16 MP
    assert client.post("/api/search", files={"image": ("ok.png", ok, "image/png")}).status_code == 200
    assert svc.pixels.peak == 16_000_000 and svc.pixels.in_use == 0
    # two images of one add: 32 MP in all, over the request's 20 MP
    r = client.post("/api/items", headers=AUTH, files=[("images", (f"{j}.png", ok, "image/png")) for j in range(2)])
    assert r.status_code == 413 and len(svc.index) == 100
    # the global budget taken by others for longer than wait_s: 503 with Retry-After
    with svc.pixels.hold(30_000_000, "someone else"):
        r = client.post("/api/search", files={"image": ("ok.png", ok, "image/png")})
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "try again" in r.json()["detail"]
    assert client.post("/api/search", files={"image": ("ok.png", ok, "image/png")}).status_code == 200
    app.state.service.close()


def test_bombs_and_oversized_images_are_refused_before_decoding(tmp_path):
    path, enc, _ = make_index_file(tmp_path)
    app = create_app(path, encoder=enc, token=None)
    client = local_client(app)
    for w, h in ((20_000, 20_000), (10_000, 10_000), (7000, 6000)):  # 400, 100 and 42 MP
        r = client.post("/api/search", files={"image": ("bomb.png", zero_png(w, h), "image/png")})
        assert r.status_code == 413, (w, h)
        assert f"{w}x{h} pixels, more than 40,000,000" in r.json()["detail"] or (  # ours, or Pillow's (> 179 MP)
            f"Image size ({w * h} pixels) exceeds limit" in r.json()["detail"])
    assert app.state.service.pixels.peak == 0  # nothing was decoded
    # a 10 x 10 PNG whose compressed text chunk inflates to 50 MB: Pillow stops at 1 MB
    png = zero_png(10, 10)
    text = b"Comment\0\0" + zlib.compress(b"\0" * 50_000_000, 9)
    text_bomb = png[:33] + struct.pack(">I", len(text)) + b"zTXt" + text + struct.pack(">I", zlib.crc32(b"zTXt" + text)) \
        + png[33:]
    r = client.post("/api/search", files={"image": ("t.png", text_bomb, "image/png")})
    assert r.status_code == 415 and "Decompressed data too large" in r.json()["detail"]


def test_saturation_answers_503_with_retry_after(tmp_path):
    """With every place taken, a request waits up to wait_s, then gets 503 + Retry-After; the health check
    still answers; once a place is free, requests are served again."""
    fmnist_pics = fmnist_test_images()
    path, enc, _ = make_index_file(tmp_path)
    gate = threading.Event()
    real = enc.encode_images_with_outputs  # what the service's batcher calls

    def slow(images, *a, **k):
        gate.wait(10)
        return real(images, *a, **k)

    enc.encode_images_with_outputs = slow
    limits = ServiceLimits(max_active=2, max_waiting=1, wait_s=0.5)
    app = create_app(path, encoder=enc, token=None, limits=limits)
    query = png_bytes(fmnist_pics[0][5])
    import httpx

    with BackgroundServer(app) as server:
        statuses: list[int] = []

        def search():
            statuses.append(httpx.post(server.url + "/api/search", timeout=30,
                                       files={"image": ("q.png", query, "image/png")}).status_code)

        busy = [threading.Thread(target=search) for _ in range(2)]
        for t in busy:
            t.start()
        middleware = None
        deadline = time.time() + 10
        while time.time() < deadline:
            middleware = _find(app.middleware_stack, "ConcurrencyLimitMiddleware")
            if middleware is not None and middleware.active == 2:
                break
            time.sleep(0.02)
        assert middleware is not None and middleware.active == 2
        waiter = threading.Thread(target=search)
        waiter.start()  # waits for a place ...
        time.sleep(0.1)
        r = httpx.get(server.url + "/api/search/by-id/3", timeout=10)  # ... and this one finds the queue full
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "saturated" in r.json()["detail"]
        assert httpx.get(server.url + "/api/health", timeout=10).status_code == 200
        waiter.join()
        assert statuses == [503]  # gave up after wait_s
        gate.set()
        for t in busy:
            t.join()
        assert sorted(statuses) == [200, 200, 503]
        assert httpx.get(server.url + "/api/search/by-id/3", timeout=10).status_code == 200
        assert middleware.refused == 2 and middleware.peak_active == 2


def _find(app, name):
    while app is not None:
        if type(app).__name__ == name:
            return app
        app = getattr(app, "app", None)
    return None


def test_thumbnails_are_decoded_once_and_cached_per_size(tmp_path):
    path, enc, _ = make_index_file(tmp_path)
    app = create_app(path, encoder=enc, token=TOKEN, upload_dir=str(tmp_path / "up"))
    client = local_client(app)
    svc = app.state.service
    photo = photo_jpeg(3000, 2000)
    r = client.post("/api/items", headers=AUTH, files=[("images", ("p.jpg", photo, "image/jpeg"))])
    assert r.status_code == 201
    item = r.json()["ids"][0]
    sizes = {}
    for size in (64, 100, 160, 1024, 64, 100):
        r = client.get(f"/api/items/{item}/image", params={"size": size})
        assert r.status_code == 200
        sizes[size] = Image.open(io.BytesIO(r.content)).size
    assert svc.thumbnails.decodes == 1  # one decode of the 6 MP original, for every size
    assert sizes[64] == (64, 43) and sizes[1024] == (1024, 683) and max(sizes[160]) == 160
    assert svc.pixels.peak < 3000 * 2000 / 3  # read at reduced scale by libjpeg
    for i in (1, 2, 3):  # dataset/file items: once each
        client.get(f"/api/items/{i}/image", params={"size": 32})
        client.get(f"/api/items/{i}/image", params={"size": 48})
    assert svc.thumbnails.decodes == 4
    svc.close()


def test_caps_on_k_and_radius_answers_say_how_many_matched(tmp_path):
    path, enc, _ = make_index_file(tmp_path)
    client = local_client(create_app(path, encoder=enc, token=None, max_k=10))
    body = client.get("/api/search/by-id/3", params={"radius": 64}).json()
    assert body["total"] == 100 and body["truncated"] is True and len(body["results"]) == 10
    body = client.get("/api/search/by-id/3", params={"radius": 0}).json()
    assert body["truncated"] is False and body["total"] == len(body["results"]) >= 1
    body = client.get("/api/search/by-id/3", params={"k": 10}).json()
    assert (body["total"], body["truncated"], len(body["results"])) == (10, False, 10)
    assert client.get("/api/search/by-id/3", params={"k": 11}).status_code == 422
    assert client.get("/api/search/by-id/3", params={"k": 10**30}).status_code == 422
