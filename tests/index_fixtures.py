"""Shared helpers for the index and service tests (no tests here): a fake encoder and real-image codes.

FakeEncoder has the interface of attnhash.inference.Encoder (bits, fingerprint, image_size, run_dir,
class_names, encode_images, encode_paths, encode_source) and maps an image to a code by a seeded random
projection of its 32x32 grey pixels, so similar images get close codes without torch.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from attnhash.codes import pack_codes

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


class FakeEncoder:
    def __init__(self, bits: int = 64, seed: int = 0, run_dir: str = "fake-run",
                 class_names: Sequence[str] | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.bits = bits
        self.image_size = 32
        self.run_dir = run_dir
        self.class_names = list(class_names) if class_names else None
        self._proj = rng.standard_normal((32 * 32, bits)).astype(np.float32)
        self.fingerprint = hashlib.sha256(self._proj.tobytes()).hexdigest()

    def _grey(self, img) -> np.ndarray:
        if not isinstance(img, Image.Image):
            img = Image.fromarray(np.asarray(img, dtype=np.uint8))
        g = np.asarray(img.convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255.0
        return (g - g.mean()).ravel()

    def encode_images_with_outputs(self, images: Sequence, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
        if len(images) == 0:
            return np.zeros((0, self.bits // 8), dtype=np.uint8), np.zeros((0, self.bits), np.float32)
        z = np.stack([self._grey(im) for im in images]) @ self._proj
        return pack_codes(np.where(z >= 0, 1, -1)), z

    def encode_images(self, images: Sequence, batch_size: int = 128) -> np.ndarray:
        return self.encode_images_with_outputs(images, batch_size)[0]

    def encode_paths(self, paths: Sequence[str], batch_size: int = 128) -> np.ndarray:
        ims = []
        for p in paths:
            with Image.open(p) as im:
                ims.append(im.convert("RGB"))
        return self.encode_images(ims)

    def encode_source(self, source, indices=None, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        idx = range(len(source)) if indices is None else indices
        return self.encode_images([source.image(int(i)) for i in idx])


def fmnist_images(n: int = 2000) -> tuple[np.ndarray, np.ndarray] | None:
    """The first n real Fashion-MNIST test images (n, 28, 28) uint8 and labels, or None if not installed."""
    ip = os.path.join(FMNIST_DIR, "t10k-images-idx3-ubyte.gz")
    lp = os.path.join(FMNIST_DIR, "t10k-labels-idx1-ubyte.gz")
    if not (os.path.exists(ip) and os.path.exists(lp)):
        return None
    with gzip.open(ip) as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(lp) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)[:n]
    return images.copy(), labels.copy()


def real_codes(bits: int = 64, n: int = 2000) -> np.ndarray | None:
    """Packed codes of real images (random-projection hashing of Fashion-MNIST): clustered, with many ties."""
    data = fmnist_images(n)
    if data is None:
        return None
    images, _ = data
    x = images.reshape(len(images), -1).astype(np.float32)
    x -= x.mean(axis=0)
    proj = np.random.default_rng(1).standard_normal((x.shape[1], bits)).astype(np.float32)
    return pack_codes(np.where(x @ proj >= 0, 1, -1))


FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]


def make_tiny_run(run_dir: str, seed: int = 0, bits: int = 16) -> str:
    """A real run folder (checkpoint + config) of an untrained, seeded 16-bit DPSH ResNet18 at 32x32 pixels.

    Untrained is enough here: the index side needs the real Encoder code path and a real fingerprint, not
    good codes, and saving a fresh network takes a second where training one takes tens.
    """
    import torch

    from attnhash.config import build_config
    from attnhash.methods.base import create_method
    from attnhash.runs import RunFolder

    torch.manual_seed(seed)
    cfg = build_config("dpsh", overrides=[f"model.bits={bits}", "model.backbone=resnet18", "model.weights=none",
                                          "data.image_size=32", "data.dataset=fmnist"])
    method = create_method("dpsh", cfg.method.params, bits, num_classes=10, num_train=0)
    spec = method.network_spec(cfg.model)
    RunFolder(run_dir).save_model(spec.build().state_dict(), cfg, spec.to_dict(),
                                  {"num_classes": 10, "class_names": FMNIST_CLASSES})
    return run_dir


def write_image_folder(folder: str, n: int = 40, start: int = 0) -> list[str]:
    """Real Fashion-MNIST images as PNG files in class folders (folder/<class>/<i>.png); returns the paths."""
    data = fmnist_images(start + n)
    if data is None:
        return []
    images, labels = data
    paths = []
    for i in range(start, start + n):
        sub = os.path.join(folder, f"c{labels[i]}")
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"{i:05d}.png")
        Image.fromarray(images[i]).save(path)
        paths.append(path)
    return paths
