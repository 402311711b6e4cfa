"""Helpers of the service tests: an index of real Fashion-MNIST images and loopback test clients."""

from __future__ import annotations

import pytest
from serve_helpers import png_bytes

from attnhash.index import create_index
from index_fixtures import FakeEncoder, fmnist_images


@pytest.fixture(scope="session")
def fmnist_pics():
    data = fmnist_images(200)
    if data is None:
        pytest.skip("Fashion-MNIST (Debian dataset-fashion-mnist) not installed")
    return data


@pytest.fixture
def index_file(tmp_path, fmnist_pics):
    """An index of 100 real images (PNG files) made with the fake encoder: (path, encoder, image paths)."""
    pics, labels = fmnist_pics
    enc = FakeEncoder(64)
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
