"""ONNX export (the same codes as PyTorch, bit for bit, and the same fingerprint) and sharded encoding (over
independent processes or torchrun ranks, merged in order into the index a single process builds)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient

from attnhash.cli import main
from attnhash.data import FileSource
from attnhash.index import open_index
from attnhash.inference import Encoder
from attnhash.inference.onnx_engine import OnnxEncoder, export_onnx
from attnhash.serve import create_app
from conftest import foolbox_photos
from index_fixtures import write_image_folder


def test_onnx_codes_equal_pytorch_codes_on_real_images(lite_run, fmnist, tmp_path):
    path = export_onnx(lite_run, tmp_path / "model.onnx")
    torch_enc, onnx_enc = Encoder(lite_run, device="cpu"), OnnxEncoder(path)
    assert onnx_enc.fingerprint == torch_enc.fingerprint and onnx_enc.bits == 64 and onnx_enc.image_size == 32
    idx = np.arange(60000, 61000)  # 1,000 real Fashion-MNIST test images
    a = torch_enc.encode_source(fmnist, idx, progress=False)
    b = onnx_enc.encode_source(fmnist, idx, progress=False)
    np.testing.assert_array_equal(a, b)  # every bit
    photos = foolbox_photos()
    if photos:
        files = FileSource([str(p) for p in photos], None, name="photos")
        np.testing.assert_array_equal(torch_enc.encode_source(files, progress=False),
                                      onnx_enc.encode_source(files, progress=False))
        images = [files.image(i) for i in range(len(files))]
        np.testing.assert_array_equal(torch_enc.encode_images(images), onnx_enc.encode_images(images))
        # the real-valued outputs too (what a reranked search orders ties by), equal up to float order
        (codes_t, z_t), (codes_o, z_o) = torch_enc.encode_images_with_outputs(images), \
            onnx_enc.encode_images_with_outputs(images)
        np.testing.assert_array_equal(codes_t, codes_o)
        np.testing.assert_allclose(z_o, z_t, rtol=1e-4, atol=1e-4)
    z_t, z_o = torch_enc.encode_source_outputs(fmnist, idx, progress=False), \
        onnx_enc.encode_source_outputs(fmnist, idx, progress=False)
    np.testing.assert_array_equal(np.packbits(z_o >= 0, axis=1), b)
    np.testing.assert_allclose(z_o, z_t, rtol=1e-4, atol=1e-4)


def test_cli_export_encode_and_an_index_with_the_same_fingerprint(lite_run, tmp_path, capsys):
    folder = tmp_path / "imgs"
    if not write_image_folder(str(folder), n=40):
        pytest.skip("Fashion-MNIST not installed")
    assert main(["export", str(lite_run), "--onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert main(["encode", str(tmp_path / "m.onnx"), "--engine", "onnx", "--images", str(folder),
                 "--out", str(tmp_path / "onnx.npz")]) == 0
    assert main(["encode", str(lite_run), "--images", str(folder), "--out", str(tmp_path / "torch.npz")]) == 0
    onnx_codes, torch_codes = np.load(tmp_path / "onnx.npz"), np.load(tmp_path / "torch.npz")
    np.testing.assert_array_equal(onnx_codes["codes"], torch_codes["codes"])
    assert str(onnx_codes["fingerprint"]) == str(torch_codes["fingerprint"])
    (lite_run / "model.onnx").write_bytes((tmp_path / "m.onnx").read_bytes())
    assert main(["index", "build", str(lite_run), "--engine", "onnx", "--images", str(folder), "--out",
                 str(tmp_path / "onnx.idx")]) == 0
    assert open_index(str(tmp_path / "onnx.idx")).fingerprint == Encoder(lite_run).fingerprint
    # the index built with ONNX answers PyTorch image queries: the fingerprint check passes
    assert main(["search", str(tmp_path / "onnx.idx"), str(sorted(folder.rglob("*.png"))[3]), "--k", "1"]) == 0
    # a search (and the service) on the ONNX engine, ties ranked by its real-valued outputs: PyTorch's answers
    query = str(sorted(folder.rglob("*.png"))[5])
    answers = {}
    for engine in ("torch", "onnx"):
        capsys.readouterr()
        assert main(["search", str(tmp_path / "onnx.idx"), query, "--k", "10", "--rerank", "--json",
                     "--engine", engine]) == 0
        answers[engine] = json.loads(capsys.readouterr().out)
    got, want = answers["onnx"][0]["results"], answers["torch"][0]["results"]
    assert [(x["id"], x["distance"]) for x in got] == [(x["id"], x["distance"]) for x in want] and len(got) == 10
    assert [x["score"] for x in got] == pytest.approx([x["score"] for x in want], rel=1e-4)  # float order only
    app = create_app(str(tmp_path / "onnx.idx"), engine="onnx", token=None, rerank=True)
    assert isinstance(app.state.service.encoder, OnnxEncoder)
    with TestClient(app, base_url="http://127.0.0.1") as client, open(query, "rb") as f:
        r = client.post("/api/search", files={"image": ("q.png", f.read(), "image/png")}, data={"k": "10"})
    assert r.status_code == 200
    assert [x["id"] for x in r.json()["results"]] == [x["id"] for x in answers["torch"][0]["results"]]
    (lite_run / "model.onnx").unlink()


def _same_index(a: str, b: str) -> None:
    ia, ib = open_index(a), open_index(b)
    assert len(ia) == len(ib) and ia.fingerprint == ib.fingerprint
    np.testing.assert_array_equal(ia.reconstruct(ia.all_ids()), ib.reconstruct(ib.all_ids()))
    assert ia.metadata(ia.all_ids()) == ib.metadata(ib.all_ids())
    assert ia.info["class_names"] == ib.info["class_names"]


def test_shards_over_processes_and_torchrun_ranks_merge_into_the_same_index(lite_run, tmp_path):
    folder = tmp_path / "imgs"
    if not write_image_folder(str(folder), n=90):
        pytest.skip("Fashion-MNIST not installed")
    run = str(lite_run)
    assert main(["index", "build", run, "--images", str(folder), "--out", str(tmp_path / "one.idx")]) == 0
    for i in range(3):
        assert main(["encode", run, "--images", str(folder), "--shard", f"{i}/3", "--out",
                     str(tmp_path / f"s{i}.npz")]) == 0
    assert [len(np.load(tmp_path / f"s{i}.npz")["codes"]) for i in range(3)] == [30, 30, 30]
    assert main(["index", "build", run, "--codes", *(str(tmp_path / f"s{i}.npz") for i in range(3)), "--out",
                 str(tmp_path / "shards.idx")]) == 0
    _same_index(str(tmp_path / "one.idx"), str(tmp_path / "shards.idx"))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "attnhash", "index", "build", run, "--images", str(folder), "--out",
                           str(tmp_path / "ranks.idx")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    _same_index(str(tmp_path / "one.idx"), str(tmp_path / "ranks.idx"))
    assert not list(tmp_path.glob("ranks.idx.part*"))  # the shares' files are merged and gone
