"""Helpers of the service tests (no tests here): image bytes, a loopback test client, the write token, and
an index of real images."""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from attnhash.index import create_index
from index_fixtures import FakeEncoder, fmnist_images

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx versions
    from fastapi.testclient import TestClient

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def local_client(app) -> TestClient:
    """A test client that names a loopback host (the service refuses others)."""
    return TestClient(app, base_url="http://127.0.0.1")


@functools.lru_cache(maxsize=1)
def _test_images():
    return fmnist_images(200)


def fmnist_test_images() -> tuple[np.ndarray, np.ndarray]:
    """The first 200 real Fashion-MNIST test images and labels (the test is skipped when not installed)."""
    data = _test_images()
    if data is None:
        pytest.skip("Fashion-MNIST (Debian dataset-fashion-mnist) not installed")
    return data


def make_index_file(tmp_path) -> tuple[str, FakeEncoder, list[str]]:
    """An index of 100 real images (PNG files) made with the fake encoder: (path, encoder, image paths)."""
    pics, labels = fmnist_test_images()
    enc = FakeEncoder(64, class_names=[f"class{i}" for i in range(10)])
    paths = []
    for i in range(100):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(png_bytes(pics[i]))
        paths.append(str(p))
    index = create_index("faiss", 64, fingerprint=enc.fingerprint,
                         info={"class_names": [f"class{i}" for i in range(10)], "run_dir": "fake-run"})
    index.add(enc.encode_images(list(pics[:100])), metadata=[{"path": p, "labels": [int(c)]}
                                                              for p, c in zip(paths, labels[:100])])
    path = str(tmp_path / "s.idx")
    index.save(path)
    return path, enc, paths
