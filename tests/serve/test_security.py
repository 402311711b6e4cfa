"""Closed writes (token, Origin, Host), limits on labels, class names and uploads, item ids, and the one
writer of an index file (the service holds its lock; CLI writers fail or wait)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from serve_helpers import AUTH, TOKEN, fmnist_test_images, local_client, make_index_file, png_bytes

from attnhash.codefile import CodeSet
from attnhash.errors import ConfigError, IndexFileError
from attnhash.index import create_index, open_index
from attnhash.index import fileformat as fileformat_module
from attnhash.index.lock import IndexBusyError, IndexLock
from attnhash.serve import BackgroundServer, create_app
from attnhash.serve.guard import load_token
from attnhash.serve.limits import ServiceLimits

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))


def add(client, fmnist, i=0, labels=None, headers=AUTH, **extra):
    """POST one real image (test image 100 + i) to /api/items."""
    data = {"labels": labels} if labels is not None else {}
    image = png_bytes(fmnist[0][100 + i])
    return client.post("/api/items", files=[("images", (f"n{i}.png", image, "image/png"))],
                       data=data, headers={**headers, **extra})


def test_writes_are_off_without_a_token(tmp_path, monkeypatch):
    fmnist_pics = fmnist_test_images()
    monkeypatch.delenv("ATTNHASH_TOKEN", raising=False)
    path, enc, _ = make_index_file(tmp_path)
    client = local_client(create_app(path, encoder=enc))
    r = add(client, fmnist_pics, headers={})
    assert r.status_code == 403 and "writes are disabled" in r.json()["detail"] and "ATTNHASH_TOKEN" in r.json()["detail"]
    assert client.delete("/api/items/3", headers=AUTH).status_code == 403
    assert client.get("/api/stats").json()["writable"] is False
    assert len(open_index(path)) == 100
    IndexLock(path).acquire().release()  # a read-only service leaves the file to CLI writers
    # searches stay open
    r = client.post("/api/search", files={"image": ("q.png", png_bytes(fmnist_pics[0][5]), "image/png")})
    assert r.status_code == 200


def test_token_from_the_environment_origin_and_sec_fetch_site(tmp_path, monkeypatch):
    fmnist_pics = fmnist_test_images()
    monkeypatch.setenv("ATTNHASH_TOKEN", TOKEN)
    path, enc, _ = make_index_file(tmp_path)
    app = create_app(path, encoder=enc)
    client = local_client(app)
    r = add(client, fmnist_pics, headers={})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert add(client, fmnist_pics, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert add(client, fmnist_pics, headers={"Authorization": TOKEN}).status_code == 401  # no scheme
    assert client.delete("/api/items/3").status_code == 401
    # the right token from another site's page: refused (CSRF)
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999", "file://"):
        r = add(client, fmnist_pics, Origin=origin)
        assert r.status_code == 403 and "cross-site" in r.json()["detail"], origin
    assert add(client, fmnist_pics, **{"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert client.delete("/api/items/3", headers={**AUTH, "Origin": "http://evil.example"}).status_code == 403
    assert len(open_index(path)) == 100
    # the right token, from no page or from the service's own page: written
    assert add(client, fmnist_pics, i=0).status_code == 201
    r = add(client, fmnist_pics, i=1, Origin="http://127.0.0.1", **{"Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 201 and r.json()["count"] == 102
    assert client.delete("/api/items/3", headers={**AUTH, "Origin": "http://127.0.0.1"}).status_code == 200
    assert len(open_index(path)) == 101
    app.state.service.close()
    # an origin allowed by configuration
    app = create_app(path, encoder=enc, allowed_origins=["https://app.example"])
    assert add(local_client(app), fmnist_pics, i=2, Origin="https://app.example").status_code == 201
    assert add(local_client(app), fmnist_pics, i=3, Origin="https://other.example").status_code == 403
    app.state.service.close()


def test_token_file(tmp_path):
    f = tmp_path / "token"
    f.write_text("  s3cret-value-42\n")
    assert load_token(str(f), environ={"ATTNHASH_TOKEN": "other"}) == "s3cret-value-42"
    assert load_token(None, environ={"ATTNHASH_TOKEN": " t0k "}) == "t0k"
    assert load_token(None, environ={}) is None
    f.write_text("\n")
    with pytest.raises(ConfigError, match="token file .*token is empty"):
        load_token(str(f))
    f.write_text("two words")
    with pytest.raises(ConfigError, match="one word"):
        load_token(str(f))
    with pytest.raises(ConfigError, match="cannot read"):
        load_token(str(tmp_path / "missing"))


def test_foreign_host_headers_are_refused(tmp_path):
    path, enc, _ = make_index_file(tmp_path)
    app = create_app(path, encoder=enc, token=None)
    client = local_client(app)
    assert client.get("/api/health").status_code == 200
    for host in ("evil.example", "rebind.attacker.test:8000", "127.0.0.1.evil.example"):
        assert client.get("/api/health", headers={"Host": host}).status_code == 400, host
        assert client.get("/api/items/3", headers={"Host": host}).status_code == 400, host
    for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
        assert client.get("/api/health", headers={"Host": host}).status_code == 200, host
    named = local_client(create_app(path, encoder=enc, token=None, allowed_hosts=["search.example"]))
    assert named.get("/api/health", headers={"Host": "search.example"}).status_code == 200
    assert named.get("/api/health").status_code == 400


def test_item_ids_outside_int64_are_client_errors(tmp_path):
    path, enc, _ = make_index_file(tmp_path)
    app = create_app(path, encoder=enc, token=TOKEN)
    client = local_client(app)
    for bad in (2**128, 2**64, 2**63, -1, "1e3", "abc"):
        for method, url in (("GET", f"/api/items/{bad}"), ("GET", f"/api/search/by-id/{bad}"),
                            ("GET", f"/api/items/{bad}/image"), ("DELETE", f"/api/items/{bad}")):
            r = client.request(method, url, headers=AUTH)
            assert r.status_code == 422, (method, url, r.status_code)
    assert client.get(f"/api/items/{2**63 - 1}").status_code == 404
    app.state.service.close()


def test_limits_on_labels_and_class_names(tmp_path):
    fmnist_pics = fmnist_test_images()
    path, enc, _ = make_index_file(tmp_path)
    limits = ServiceLimits(max_labels_per_item=4, max_label_chars=12, max_classes=13)
    app = create_app(path, encoder=enc, token=TOKEN, limits=limits)
    client = local_client(app)
    assert add(client, fmnist_pics, labels="a,b,c,d,e").status_code == 422
    assert add(client, fmnist_pics, labels="x" * 13).status_code == 422
    assert add(client, fmnist_pics, labels="13").status_code == 422  # a class number past the limit
    r = add(client, fmnist_pics, labels="new1,new2,new3")
    assert r.status_code == 201 and client.get("/api/stats").json()["class_names"][10:] == ["new1", "new2", "new3"]
    r = add(client, fmnist_pics, i=1, labels="new4")
    assert r.status_code == 422 and "past 13 class names" in r.json()["detail"]
    r = add(client, fmnist_pics, i=1, labels="new1,class3,5")  # known names and numbers still work
    assert r.status_code == 201
    assert open_index(path).metadata([r.json()["ids"][0]])[0]["labels"] == [3, 5, 10]
    assert len(open_index(path).info["class_names"]) == 13
    # many label names in one request: refused whole, the class list untouched
    r = client.post("/api/items", headers=AUTH, data={"labels": [",".join(f"L{j}" for j in range(3))] * 2},
                    files=[("images", (f"{j}.png", png_bytes(fmnist_pics[0][110 + j]), "image/png")) for j in range(2)])
    assert r.status_code == 422 and len(open_index(path).info["class_names"]) == 13
    app.state.service.close()


def test_uploads_folder_quota(tmp_path):
    fmnist_pics = fmnist_test_images()
    path, enc, _ = make_index_file(tmp_path)
    limits = ServiceLimits(uploads_max_files=2)
    upload_dir = tmp_path / "uploads"
    app = create_app(path, encoder=enc, token=TOKEN, limits=limits, upload_dir=str(upload_dir))
    client = local_client(app)
    first = add(client, fmnist_pics, i=0).json()["ids"][0]
    assert add(client, fmnist_pics, i=1).status_code == 201
    r = add(client, fmnist_pics, i=2)
    assert r.status_code == 507 and "uploads folder" in r.json()["detail"] and "is full" in r.json()["detail"]
    assert len(open_index(path)) == 102 and len(os.listdir(upload_dir)) == 2
    assert client.delete(f"/api/items/{first}", headers=AUTH).status_code == 200  # frees its file
    assert add(client, fmnist_pics, i=2).status_code == 201
    app.state.service.close()
    # the usage is counted again at start-up
    app = create_app(path, encoder=enc, token=TOKEN, limits=limits, upload_dir=str(upload_dir))
    assert app.state.service.uploads.files == 2
    assert add(local_client(app), fmnist_pics, i=3).status_code == 507
    app.state.service.close()
    too_many = ServiceLimits(max_images_per_add=2)
    app = create_app(path, encoder=enc, token=TOKEN, limits=too_many, upload_dir=str(tmp_path / "u2"))
    r = local_client(app).post("/api/items", headers=AUTH, files=[
        ("images", (f"{j}.png", png_bytes(fmnist_pics[0][j]), "image/png")) for j in range(3)])
    assert r.status_code == 422 and "at most 2" in r.json()["detail"]
    app.state.service.close()


def test_full_disk_during_an_add_loses_nothing(monkeypatch, tmp_path):
    """Injected ENOSPC in the index write: 507, nothing added (not searchable, upload deleted), the file as
    before; then the disk has room and the next add works and the file opens (issue 13: it did not)."""
    import errno
    from contextlib import contextmanager

    fmnist_pics = fmnist_test_images()
    path, enc, _ = make_index_file(tmp_path)
    app = create_app(path, encoder=enc, token=TOKEN, upload_dir=str(tmp_path / "up"))
    client = local_client(app)
    real_open = fileformat_module.atomic_open
    full = {"on": True}

    @contextmanager
    def disk(p, mode="wb"):
        with real_open(p, mode) as f:
            if full["on"]:
                f.write(b"\0" * 100)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            yield f

    monkeypatch.setattr(fileformat_module, "atomic_open", disk)
    query = png_bytes(fmnist_pics[0][150])
    for _ in range(2):
        r = client.post("/api/items", headers=AUTH, data={"labels": "brand-new"},
                        files=[("images", ("q.png", query, "image/png"))])
        assert r.status_code == 507, r.text
        assert "No space left on device" in r.json()["detail"] and "nothing was added" in r.json()["detail"]
        hits = client.post("/api/search", files={"image": ("q.png", query, "image/png")},
                           data={"k": "3"}).json()["results"]
        assert all(h["id"] < 100 for h in hits)  # not searchable
        stats = client.get("/api/stats").json()
        assert stats["count"] == 100 and "brand-new" not in stats["class_names"]
        assert not os.listdir(tmp_path / "up")
        r = client.delete("/api/items/7", headers=AUTH)
        assert r.status_code == 507 and "was not removed" in r.json()["detail"]
        assert client.get("/api/items/7").status_code == 200
    full["on"] = False
    r = client.post("/api/items", headers=AUTH, files=[("images", ("q.png", query, "image/png"))])
    assert r.status_code == 201 and r.json() == {"ids": [100], "count": 101}
    assert client.delete("/api/items/7", headers=AUTH).status_code == 200
    back = open_index(path)
    assert len(back) == 100 and 100 in back and 7 not in back
    app.state.service.close()


def test_index_recording_a_run_without_fingerprint_is_refused(tmp_path):
    path = str(tmp_path / "a.idx")
    index = create_index("faiss", 64, info={"run_dir": "runs/x"})  # the fingerprint lost (a crafted header)
    index.add(np.zeros((3, 8), np.uint8))
    index.save(path)
    with pytest.raises(IndexFileError, match="records the run runs/x but not the fingerprint of its model"):
        create_app(path, token=None)


# ---- one writer per index file --------------------------------------------------------------------------
def _codes_file(tmp_path, enc, pics, start, n, name):
    codes = CodeSet(enc.encode_images(list(pics[start:start + n])), 64, enc.fingerprint,
                    paths=[f"/data/{name}-{j}.png" for j in range(n)])
    out = str(tmp_path / f"{name}.npz")
    codes.save(out)
    return out


def _cli(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "attnhash", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120, **kwargs)


def test_cli_writer_and_service_never_lose_items(tmp_path):
    """The case of issue 13: `index add` on the file a service uses, then an API add. Now the CLI is refused
    while the service holds the file, the API add is kept, and the CLI's add after the service has gone (or
    waiting for it with --wait) is kept too: no item lost, no id issued twice."""
    fmnist_pics = fmnist_test_images()
    path, enc, _ = make_index_file(tmp_path)
    pics = fmnist_pics[0]
    codes_a = _codes_file(tmp_path, enc, pics, 120, 5, "a")
    codes_b = _codes_file(tmp_path, enc, pics, 130, 5, "b")
    app = create_app(path, encoder=enc, token=TOKEN, upload_dir=str(tmp_path / "up"))
    with BackgroundServer(app) as server:
        r = _cli("index", "add", path, "--codes", codes_a)
        assert r.returncode == 2 and r.stdout == ""
        assert f"is in use by PID {os.getpid()} (attnhash serve {path})" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        import httpx

        r = httpx.post(server.url + "/api/items", headers=AUTH,
                       files=[("images", ("x.png", png_bytes(pics[140]), "image/png"))])
        assert r.status_code == 201 and r.json()["ids"] == [100]
        # a CLI writer that waits: it gets the file once the service stops, and reads it only then
        waiter = subprocess.Popen([sys.executable, "-m", "attnhash", "index", "add", path, "--codes", codes_b,
                                   "--wait", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONPATH": SRC})
        time.sleep(1.0)
        assert waiter.poll() is None  # still waiting
    out, err = waiter.communicate(timeout=60)  # the server stopped: its lifespan released the lock
    assert waiter.returncode == 0, err
    assert "added 5 items (ids 101..105)" in out
    r = _cli("index", "add", path, "--codes", codes_a)
    assert r.returncode == 0 and "added 5 items (ids 106..110)" in r.stdout
    final = open_index(path)
    ids = final.all_ids()
    assert len(final) == 111 and len(np.unique(ids)) == 111 and ids.max() == 110


def test_two_cli_writers_keep_every_item_they_report(tmp_path):
    fmnist_pics = fmnist_test_images()
    path, enc, _ = make_index_file(tmp_path)
    pics = fmnist_pics[0]
    files = [_codes_file(tmp_path, enc, pics, 100 + 5 * j, 5, f"w{j}") for j in range(4)]
    env = {**os.environ, "PYTHONPATH": SRC}
    procs = [subprocess.Popen([sys.executable, "-m", "attnhash", "index", "add", path, "--codes", f,
                               "--wait", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for f in files]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    reported = [o[0] for o in outs]
    assert all("added 5 items" in o for o in reported)
    final = open_index(path)
    assert len(final) == 120 and len(np.unique(final.all_ids())) == 120
    paths = {m["path"] for m in final.metadata(final.all_ids()[100:])}
    assert paths == {f"/data/w{j}-{i}.png" for j in range(4) for i in range(5)}
    # without --wait, a writer that finds the file taken says so and changes nothing
    with IndexLock(path, "a test holding the file"):
        r = _cli("index", "remove", path, 3)
        assert r.returncode == 2 and "in use by PID" in r.stderr and "(a test holding the file)" in r.stderr
    assert 3 in open_index(path)


def test_service_waits_for_the_lock_or_names_the_holder(tmp_path):
    path, enc, _ = make_index_file(tmp_path)
    holder = IndexLock(path, "attnhash index add (a test)").acquire()
    with pytest.raises(IndexBusyError, match=r"in use by PID \d+ \(attnhash index add \(a test\)\)"):
        create_app(path, encoder=enc, token=TOKEN)
    threading.Timer(0.3, holder.release).start()
    app = create_app(path, encoder=enc, token=TOKEN, lock_wait=10)
    assert app.state.service.file_lock.held
    app.state.service.close()
    # a service that keeps changes in memory only does not take the file
    with IndexLock(path):
        create_app(path, encoder=enc, token=TOKEN, persist=False)
