"""`attnhash index build|add|remove|info` and `attnhash search` end to end, with a real (tiny) run and real images."""

from __future__ import annotations

import json
import os

import pytest

from attnhash.cli import main
from attnhash.index import open_index
from index_fixtures import make_tiny_run, write_image_folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    images = write_image_folder(str(root / "images"), n=40)
    if not images:
        pytest.skip("Fashion-MNIST (Debian dataset-fashion-mnist) not installed")
    more = write_image_folder(str(root / "more"), n=10, start=40)
    run = make_tiny_run(str(root / "run"), seed=0)
    other = make_tiny_run(str(root / "other-run"), seed=1)
    return root, run, other, images, more


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_build_search_add_remove_info(setup, capsys):
    root, run, _, images, more = setup
    idx = root / "a.idx"
    code, out, _ = run_cli(capsys, "index", "build", run, "--images", root / "images", "--out", idx)
    assert code == 0 and "40 items, 16-bit codes" in out

    code, out, _ = run_cli(capsys, "index", "info", idx, "--json")
    info = json.loads(out)
    assert (info["count"], info["bits"], info["verified"]) == (40, 16, True)
    assert info["run_dir"] == os.path.abspath(run) and len(info["fingerprint"]) == 64
    assert sorted(info["class_names"]) == sorted({os.path.basename(os.path.dirname(p)) for p in images})

    # an indexed image finds itself first, at distance 0, with its path and label
    query = images[7]
    code, out, _ = run_cli(capsys, "search", idx, query, "--k", 5, "--json")
    res = json.loads(out)
    assert code == 0 and res[0]["query"] == query
    hits = res[0]["results"]
    assert len(hits) == 5 and hits[0]["distance"] == 0
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
    same = [h for h in hits if h["path"] == query]
    assert same and same[0]["distance"] == 0
    assert same[0]["label_names"] == [os.path.basename(os.path.dirname(query))]

    code, out, _ = run_cli(capsys, "search", idx, "--id", same[0]["id"], "--radius", 0)
    assert code == 0 and query in out and "radius 0" in out

    code, out, _ = run_cli(capsys, "search", idx, "--id", 3, "--k", 3)
    assert code == 0 and "query id:3" in out and len(out.strip().splitlines()) == 5  # title, header, 3 rows

    code, out, _ = run_cli(capsys, "index", "add", idx, "--images", root / "more")
    assert code == 0 and "added 10 items (ids 40..49)" in out
    code, out, _ = run_cli(capsys, "index", "remove", idx, 0, 41, 12345)
    assert code == 1 and "removed 2 of 3 ids" in out
    back = open_index(str(idx))
    assert len(back) == 48 and 0 not in back and 41 not in back and 49 in back
    assert {m["path"] for m in back.metadata(range(42, 50))} <= set(more)


def test_refuses_another_model_and_corrupted_files(setup, capsys, tmp_path):
    root, run, other, images, _ = setup
    idx = tmp_path / "b.idx"
    assert run_cli(capsys, "index", "build", run, "--images", root / "images", "--out", idx)[0] == 0
    code, _, err = run_cli(capsys, "search", idx, images[0], "--run", other)
    assert code == 2
    assert "was built by model with fingerprint" in err and "the query model is" in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback

    code, _, err = run_cli(capsys, "index", "build", run, "--images", root / "images", "--out", idx)
    assert code == 2 and "exists; pass --force" in err

    with open(idx, "r+b") as f:
        f.seek(600)
        f.write(b"\xff\xfe")
    code, _, err = run_cli(capsys, "index", "info", idx)
    assert code == 2 and "corrupted" in err and str(idx) in err
    os.truncate(idx, 700)
    code, _, err = run_cli(capsys, "search", idx, images[0])
    assert code == 2 and "truncated" in err

    code, _, err = run_cli(capsys, "search", root / "missing.idx", images[0])
    assert code == 2 and "does not exist" in err
