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


def _zero_png(path, width: int, height: int) -> str:
    """A grey PNG of zeros made without decoding it (a 20000 x 20000 decompression bomb is 390 KB)."""
    import struct
    import zlib

    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(b"\0" * (width + 1)) for _ in range(height)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    head = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return str(path)


def test_one_writer_at_a_time(setup, capsys, tmp_path):
    import threading

    from attnhash.index.lock import IndexLock

    root, run, _, _, _ = setup
    idx = str(tmp_path / "w.idx")
    assert run_cli(capsys, "index", "build", run, "--images", root / "images", "--out", idx)[0] == 0
    with IndexLock(idx, "attnhash serve w.idx"):
        for argv in (("index", "add", idx, "--images", root / "more"), ("index", "remove", idx, 3),
                     ("index", "build", run, "--images", root / "images", "--out", idx, "--force")):
            code, out, err = run_cli(capsys, *argv)
            assert code == 2 and out == "", argv
            assert f"is in use by PID {os.getpid()} (attnhash serve w.idx)" in err and "--wait" in err
            assert len(err.strip().splitlines()) == 1
    assert len(open_index(idx)) == 40
    holder = IndexLock(idx, "a slow writer").acquire()
    threading.Timer(0.5, holder.release).start()
    code, out, _ = run_cli(capsys, "index", "remove", idx, 3, "--wait", 30)
    assert code == 0 and "removed 1 of 1 ids" in out


def test_item_ids_k_and_radius_caps(setup, capsys, tmp_path):
    root, run, _, _, _ = setup
    idx = str(tmp_path / "c.idx")
    assert run_cli(capsys, "index", "build", run, "--images", root / "images", "--out", idx)[0] == 0
    for argv in (("index", "remove", idx, 2**128), ("search", idx, "--id", 2**64), ("search", idx, "--id", -1)):
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in argv])
        assert exit_info.value.code == 2
        assert "item ids run from 0 to 2^63-1" in capsys.readouterr().err
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"3\n{2**70}\n")
    code, _, err = run_cli(capsys, "index", "remove", idx, "--ids-file", ids_file)
    assert code == 2 and "ids.txt: cannot read ids (item ids run from 0 to 2^63-1" in err
    # k beyond --max-results is refused in one line; a huge cap asks only for what the index holds
    code, _, err = run_cli(capsys, "search", idx, "--id", 3, "--k", 1_000_000_000)
    assert code == 2 and "--k 1000000000 is more than --max-results 1000" in err
    code, out, _ = run_cli(capsys, "search", idx, "--id", 3, "--k", 1_000_000_000, "--max-results", 2_000_000_000,
                           "--json")
    answer = json.loads(out)[0]
    assert code == 0 and len(answer["results"]) == 40 and answer["total"] == 40 and not answer["truncated"]
    # a radius answer cut by --max-results says how many matched, in the table and in JSON
    code, out, _ = run_cli(capsys, "search", idx, "--id", 3, "--radius", 16, "--max-results", 5, "--json")
    answer = json.loads(out)[0]
    assert (answer["total"], answer["truncated"], len(answer["results"])) == (40, True, 5)
    code, out, _ = run_cli(capsys, "search", idx, "--id", 3, "--radius", 16, "--max-results", 5)
    assert "radius 16, 40 results, the first 5 shown (--max-results)" in out


def test_decompression_bombs_are_one_line_errors(setup, capsys, tmp_path):
    root, run, _, _, _ = setup
    idx = str(tmp_path / "b.idx")
    assert run_cli(capsys, "index", "build", run, "--images", root / "images", "--out", idx)[0] == 0
    bomb = _zero_png(tmp_path / "bomb.png", 20_000, 20_000)  # 400 megapixels in 390 KB
    for argv in (("encode", run, "--images", bomb, "--out", tmp_path / "x.npz"), ("search", idx, bomb),
                 ("explain", run, bomb, "--out", tmp_path / "x.png")):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and len(err.strip().splitlines()) == 1, (argv, err)
        assert "bomb.png" in err and "exceeds limit" in err
