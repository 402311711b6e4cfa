"""Helpers of the service tests (no tests here): image bytes, a loopback test client, the write token."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

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
