"""`attnhash index build/add/remove/info`, `search` and `serve` on a Milvus collection (milvus-lite), against the
same commands on a FAISS index file: the same results, ties included."""

from __future__ import annotations

import json
import warnings

import pytest

from attnhash.cli import main
from attnhash.errors import AttnHashError
from attnhash.index import create_index
from index_fixtures import make_tiny_run, write_image_folder

pytestmark = pytest.mark.milvus

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("milvus-cli")
    try:
        probe = create_index("milvus", 8, uri=str(root / "probe.db"), collection="probe")
        probe.close()
    except (AttnHashError, ImportError) as err:
        pytest.skip(f"milvus-lite cannot start: {err}")
    images = write_image_folder(str(root / "images"), n=60)
    if not images:
        pytest.skip("Fashion-MNIST (Debian dataset-fashion-mnist) not installed")
    more = write_image_folder(str(root / "more"), n=6, start=60)
    run = make_tiny_run(str(root / "run"), seed=0)
    return root, run, images, more


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def search_json(capsys, *argv):
    code, out, err = run_cli(capsys, "search", *argv, "--json")
    assert code == 0, err
    return [[(h["id"], h["distance"], h["path"], h["label_names"]) for h in q["results"]] for q in json.loads(out)]


def test_build_search_add_remove_info_on_milvus_match_faiss(setup, capsys):
    root, run, images, more = setup
    idx, db = root / "f.idx", root / "m.db"
    assert run_cli(capsys, "index", "build", run, "--images", root / "images", "--out", idx)[0] == 0
    code, out, err = run_cli(capsys, "index", "build", run, "--images", root / "images", "--backend", "milvus",
                             "--out", db)
    assert code == 0, err
    assert "60 items, 16-bit codes" in out and "Milvus collection 'attnhash'" in out

    # 16-bit codes of an untrained network: many ties, so the tie order is really compared
    queries = [images[3], images[17], images[40]]
    for flags in (["--k", 25], ["--k", 60], ["--radius", 2]):
        want = search_json(capsys, idx, *queries, "--id", 5, *flags)
        assert search_json(capsys, db, *queries, "--id", 5, *flags, "--backend", "milvus") == want
        assert search_json(capsys, *queries, "--id", 5, *flags, "--uri", db) == want
    d25 = [h[1] for h in search_json(capsys, idx, images[3], "--k", 25)[0]]
    assert len(set(d25)) < len(d25)  # ties inside the top 25

    code, out, _ = run_cli(capsys, "index", "info", "--uri", db, "--json")
    info = json.loads(out)
    assert code == 0 and (info["backend"], info["count"], info["bits"], info["collection"]) == ("milvus", 60, 16,
                                                                                               "attnhash")
    code, out, _ = run_cli(capsys, "index", "info", idx, "--json")
    faiss_info = json.loads(out)
    for key in ("fingerprint", "run_dir", "class_names", "distinct_codes", "largest_group", "next_id"):
        assert info[key] == faiss_info[key], key
    assert 0 < info["distinct_codes"] <= 60 and info["largest_group"] >= 1

    # a second build into the same collection is refused unless forced
    code, _, err = run_cli(capsys, "index", "build", run, "--images", root / "images", "--uri", db)
    assert code == 2 and "exists" in err and "--force" in err
    # add and remove through --uri, and the same on the file: still the same results
    for where in (["--uri", db], [idx]):
        assert run_cli(capsys, "index", "add", *where, "--images", root / "more")[0] == 0
        assert run_cli(capsys, "index", "remove", *where, 0, 7, 61)[0] == 0
    want = search_json(capsys, idx, *queries, "--k", 30)
    assert search_json(capsys, *queries, "--k", 30, "--uri", db) == want
    assert all(h[0] not in (0, 7, 61) for row in want for h in row)

    # the service fronts the collection: search by image and by id, and a batch
    from attnhash.serve import create_app

    client = TestClient(create_app(str(db), backend="milvus", index_options={"collection": "attnhash"}),
                        base_url="http://127.0.0.1")  # a loopback Host: the service answers no other by default
    stats = client.get("/api/stats").json()
    assert (stats["backend"], stats["count"]) == ("milvus", 63)
    by_id = client.get("/api/search/by-id/5", params={"k": 30}).json()["results"]
    want_id = search_json(capsys, idx, "--id", 5, "--k", 30)[0]
    assert [(h["id"], h["distance"]) for h in by_id] == [(w[0], w[1]) for w in want_id]
    with open(images[3], "rb") as f:
        png = f.read()
    batch = client.post("/api/search/batch", files=[("images", ("a.png", png, "image/png"))],
                        data={"ids": ["5", "9"], "k": "30", "rerank": "false"}).json()["results"]
    assert [q["query"].get("id") for q in batch] == [None, 5, 9]
    assert [(h["id"], h["distance"]) for h in batch[0]["results"]] == [(w[0], w[1]) for w in want[0]]
    assert [(h["id"], h["distance"]) for h in batch[1]["results"]] == [(h["id"], h["distance"]) for h in by_id]


def test_milvus_location_errors_are_one_line(setup, capsys, tmp_path):
    root, run, images, _ = setup
    code, _, err = run_cli(capsys, "search", images[0], "--uri", tmp_path / "none.db", "--collection", "nope")
    assert code == 2 and "no attnhash collection 'nope'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "index", "info", "--backend", "faiss", "--uri", tmp_path / "x.db")
    assert code == 2 and "--uri names a Milvus database" in err
    code, _, err = run_cli(capsys, "index", "build", run, "--images", root / "images")
    assert code == 2 and "--out" in err
