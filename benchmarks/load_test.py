"""Load and fault test of the search service, on loopback, against the demo's 64,000-item index.

    python benchmarks/load_test.py                       # runs `attnhash demo` first (about 100 s) unless given
    python benchmarks/load_test.py --index runs/demo/database.idx --requests 2000

The service runs in its own process (`attnhash serve`, writes enabled by ATTNHASH_TOKEN) on a copy of the
index. Phases:
  1. burst: --clients concurrent searches with 36-megapixel PNG uploads (under the 40 MP limit), three times;
  2. mixed load: --clients threads, each with its own connection, send --requests requests each: searches by
     image (real Fashion-MNIST test images, top-k or radius 2), by id, thumbnails, adds (with the token),
     removes, and 10% bad inputs (not an image, a truncated PNG, a 42 MP and a 400 MP decompression bomb, a body
     over the upload limit, bad k/radius, an id of 2^128, an unknown id, a write without the token, from a
     foreign Origin, with too many labels, a foreign Host header), each with the 4xx it must get;
  3. faults: a CLI writer on the served file, aborted uploads, a flood beyond the concurrency limit, kill -9 of
     the service during adds and removes (then restarted), a graceful restart, and a full disk (the index on a
     small tmpfs; root only). After each, every acknowledged add must be in the file and every acknowledged
     remove gone ("items lost").
The peak RSS of the service (VmHWM) is read from /proc; the item count at the end (service and file) must be
the count expected from the acknowledged changes. Results: benchmarks/results/load_test.{md,json}.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

RESULTS = Path(__file__).with_name("results")
FMNIST = os.environ.get("ATTNHASH_FMNIST_DIR", "/usr/share/datasets/fashion-mnist")
TOKEN = "load-test-token-5f0c1d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROOT = Path(__file__).resolve().parent.parent


def attnhash(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "attnhash", *args], env=env, text=True, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- payloads ---------------------------------------------------------------------------------------------
def zero_png(width: int, height: int, pattern: bool = False) -> bytes:
    """A grey PNG made row by row without holding the image (a 20000 x 20000 bomb is 390 KB)."""
    comp = zlib.compressobj(6)
    parts = []
    for y in range(height):
        if pattern:  # a smooth, image-like pattern that still compresses (a 36 MP upload under 10 MB)
            x = np.arange(width)
            row = (((x // 40) * 37 + (y // 40) * 91) % 256).astype(np.uint8).tobytes()
        else:
            row = b"\0" * width
        parts.append(comp.compress(b"\0" + row))
    data = b"".join(parts) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    head = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def query_pngs(n: int) -> list[bytes]:
    """Fashion-MNIST *test* images as PNG bytes (the index holds the training images)."""
    with gzip.open(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    out = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def bad_requests(pngs: list[bytes]) -> list[tuple[str, int, dict]]:
    """(name, the status it must get, httpx request arguments) for each kind of bad input."""
    png = pngs[0]
    over = zero_png(7000, 6000)  # 42 MP, over the 40 MP limit
    bomb = zero_png(20_000, 20_000)  # 400 MP in 390 KB
    big_body = b"\x89PNG" + os.urandom(11 * 2**20)

    def search(data, name="q.png", **form):
        return {"method": "POST", "url": "/api/search", "files": {"image": (name, data, "image/png")}, "data": form}

    def add(headers, labels=None):
        return {"method": "POST", "url": "/api/items", "headers": headers,
                "files": [("images", ("a.png", png, "image/png"))], "data": {"labels": labels} if labels else {}}

    return [
        ("not an image", 415, search(b"just some text", "notes.txt")),
        ("truncated PNG", 415, search(png[:60])),
        ("42 MP image", 413, search(over)),
        ("400 MP decompression bomb", 413, search(bomb)),
        ("11 MB body", 413, search(big_body)),
        ("k = 0", 422, search(png, k="0")),
        ("k = 100000", 422, search(png, k="100000")),
        ("radius 99", 422, {"method": "GET", "url": "/api/search/by-id/1", "params": {"radius": 99}}),
        ("k and radius", 422, search(png, k="3", radius="2")),
        ("id 2^128", 422, {"method": "GET", "url": f"/api/items/{2**128}"}),
        ("unknown id", 404, {"method": "GET", "url": f"/api/search/by-id/{10**12}"}),
        ("add without token", 401, add({})),
        ("add from a foreign Origin", 403, add({**AUTH, "Origin": "http://evil.example"})),
        ("33 labels", 422, add(AUTH, ",".join(f"l{j}" for j in range(33)))),
        ("foreign Host", 400, {"method": "GET", "url": "/api/health", "headers": {"Host": "evil.example"}}),
        ("delete unknown id", 404, {"method": "DELETE", "url": f"/api/items/{10**12}", "headers": AUTH}),
    ]


# ---- the service ------------------------------------------------------------------------------------------
class Service:
    """`attnhash serve INDEX` in its own process, writes on with the token."""

    def __init__(self, index: str, log: Path, extra: tuple[str, ...] = ()) -> None:
        self.index, self.log_path, self.extra = index, log, extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> Service:
        env = {**os.environ, "ATTNHASH_TOKEN": TOKEN,
               "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.log = open(self.log_path, "a")  # a file, not a pipe: an undrained pipe would stall the server
        self.proc = subprocess.Popen([sys.executable, "-m", "attnhash", "serve", self.index, "--host", "127.0.0.1",
                                      "--port", str(self.port), "--log-level", "warning", "--wait", "30",
                                      *self.extra], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while True:
            try:
                if httpx.get(self.url + "/api/health", timeout=2).json()["model_loaded"]:
                    return self
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the service did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Ledger:
    """What the service acknowledged: ids added and removed (thread-safe), and the removes in flight when the
    service was killed (their outcome is only known from the file)."""

    def __init__(self, initial: np.ndarray) -> None:
        self.present = set(initial.tolist())
        self.added: set[int] = set()
        self.removed: set[int] = set()
        self.uncertain_removes: set[int] = set()
        self.lock = threading.Lock()

    def add(self, ids: list[int]) -> None:
        with self.lock:
            self.added.update(ids)
            self.present.update(ids)

    def remove(self, item: int) -> None:
        with self.lock:
            self.removed.add(item)
            self.present.discard(item)

    def lost(self, index_path: str) -> tuple[int, set[int]]:
        """(acknowledged changes the file does not show, ids in the file the ledger does not know)."""
        from attnhash.index import open_index

        ids = set(open_index(index_path).all_ids().tolist())
        with self.lock:
            missing = len(self.present - ids) + len(self.removed & ids)
            return missing, ids - self.present

    def adopt(self, index_path: str, adds_in_flight: int) -> int:
        """After a kill: the changes in flight may or may not have been saved; the file tells. Only unknown new
        ids (at most one per add in flight) and the removes in flight are taken from it: anything else the
        file lacks stays lost. Returns how many in-flight changes had been saved."""
        from attnhash.index import open_index

        ids = set(open_index(index_path).all_ids().tolist())
        with self.lock:
            extra = ids - self.present - self.removed
            assert len(extra) <= adds_in_flight, (len(extra), adds_in_flight)
            gone = (self.present - ids) & self.uncertain_removes
            self.present |= extra
            self.present -= gone
            self.uncertain_removes.clear()
            return len(extra) + len(gone)


# ---- load -------------------------------------------------------------------------------------------------
def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    a = np.array(values) * 1000
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


def burst_36mp(url: str, clients: int, big: bytes) -> dict:
    statuses: list[int] = []
    lat: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def one() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            start.wait()
            t = time.perf_counter()
            r = c.post("/api/search", files={"image": ("big.png", big, "image/png")}, data={"k": "10"})
            with lock:
                statuses.append(r.status_code)
                lat.append(time.perf_counter() - t)
                if r.status_code == 503:
                    assert "retry-after" in r.headers

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"statuses": dict(Counter(statuses)), **percentiles(lat)}


def mixed_load(url: str, clients: int, requests: int, pngs: list[bytes], bad: list, ledger: Ledger,
               searchable: list[int], removable: list[list[int]], seed: int = 0) -> dict:
    kinds = ["image k", "image radius", "id k", "id radius", "thumbnail", "add", "remove", "bad"]
    weights = [0.30, 0.10, 0.25, 0.07, 0.05, 0.08, 0.05, 0.10]
    lat: dict[str, list[float]] = defaultdict(list)
    statuses: dict[str, Counter] = defaultdict(Counter)
    unexpected: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        rng = np.random.default_rng(seed * 1000 + c)
        mine = list(removable[c])
        added_here: list[int] = []
        with httpx.Client(base_url=url, timeout=120) as http:
            for _ in range(requests):
                kind = kinds[rng.choice(len(kinds), p=weights)]
                want: tuple[int, ...] = (200,)
                q = pngs[int(rng.integers(len(pngs)))]
                if kind == "image k":
                    args = {"method": "POST", "url": "/api/search", "files": {"image": ("q.png", q, "image/png")},
                            "data": {"k": "10"}}
                elif kind == "image radius":
                    args = {"method": "POST", "url": "/api/search", "files": {"image": ("q.png", q, "image/png")},
                            "data": {"radius": "2"}}
                elif kind in ("id k", "id radius"):
                    item = searchable[int(rng.integers(len(searchable)))]
                    params = {"k": 10} if kind == "id k" else {"radius": 2}
                    args = {"method": "GET", "url": f"/api/search/by-id/{item}", "params": params}
                elif kind == "thumbnail":
                    item = searchable[int(rng.integers(len(searchable)))]
                    args = {"method": "GET", "url": f"/api/items/{item}/image",
                            "params": {"size": int(rng.choice([64, 160]))}}
                elif kind == "add":
                    args = {"method": "POST", "url": "/api/items", "headers": AUTH,
                            "files": [("images", ("a.png", q, "image/png"))], "data": {"labels": f"load{c % 4}"}}
                    want = (201,)
                elif kind == "remove":
                    pool = added_here if added_here and rng.random() < 0.5 else mine
                    if not pool:
                        continue
                    item = pool.pop(int(rng.integers(len(pool))))
                    args = {"method": "DELETE", "url": f"/api/items/{item}", "headers": AUTH}
                else:
                    name, status, args = bad[int(rng.integers(len(bad)))]
                    kind, want = f"bad: {name}", (status,)
                t = time.perf_counter()
                try:
                    r = http.request(**args)
                    status = r.status_code
                except httpx.HTTPError as err:  # the 11 MB body: the service answers 413 before reading it
                    status = -1
                    if not kind.startswith("bad: 11 MB"):
                        with lock:
                            unexpected.append(f"{kind}: {type(err).__name__} {err}")
                dt = time.perf_counter() - t
                if status == 201 and kind == "add":
                    ids = r.json()["ids"]
                    ledger.add(ids)
                    added_here.extend(ids)
                elif status == 200 and kind == "remove":
                    ledger.remove(item)
                with lock:
                    lat[kind].append(dt)
                    statuses[kind][status] += 1
                    ok = status in want or status == 503 or (status == -1 and kind.startswith("bad: 11 MB"))
                    if not ok:
                        unexpected.append(f"{kind}: got {status}, expected {want}: "
                                          f"{r.text[:120] if status > 0 else ''}")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    good = [x for k, v in lat.items() if not k.startswith("bad") for x in v]
    all_statuses = Counter()
    for counts in statuses.values():
        all_statuses.update(counts)
    return {
        "wall_s": wall, "requests": sum(len(v) for v in lat.values()),
        "throughput_rps": sum(len(v) for v in lat.values()) / wall,
        "valid": percentiles(good),
        "by_kind": {k: {**percentiles(v), "statuses": {str(s): n for s, n in statuses[k].items()}}
                    for k, v in sorted(lat.items())},
        "statuses": {str(s): n for s, n in sorted(all_statuses.items())},
        "server_errors": sum(n for s, n in all_statuses.items() if s >= 500 and s != 503),
        "deliberate_503": all_statuses.get(503, 0),
        "unexpected": unexpected[:20], "unexpected_count": len(unexpected),
    }


# ---- faults -----------------------------------------------------------------------------------------------
def fault_cli_writer(svc: Service, work: Path, codes_file: str, ledger: Ledger, times: int = 3) -> dict:
    outcomes = Counter()
    for _ in range(times):
        r = attnhash("index", "add", svc.index, "--codes", codes_file, capture_output=True)
        ok = r.returncode == 2 and f"in use by PID {svc.proc.pid}" in r.stderr and len(r.stderr.splitlines()) == 1
        outcomes["refused, naming the service" if ok else f"rc {r.returncode}: {r.stderr.strip()[:100]}"] += 1
    lost, unknown = ledger.lost(svc.index)
    return {"fault": "`attnhash index add` on the served index", "times": times,
            "happened": "; ".join(f"{n}x {k}" for k, n in outcomes.items()) + " (exit 2, one line)",
            "lost": lost + len(unknown)}


def fault_aborted_uploads(svc: Service, times: int = 20) -> dict:
    healthy = 0
    for _ in range(times):
        with socket.create_connection(("127.0.0.1", svc.port)) as s:
            s.sendall(b"POST /api/items HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                      b"boundary=x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 5000000\r\n\r\n"
                      b"--x\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n\r\n"
                      + os.urandom(100_000))
        healthy += httpx.get(svc.url + "/api/health", timeout=10).status_code == 200
    return {"fault": "upload aborted mid-body (client disconnects)", "times": times,
            "happened": f"service healthy after each ({healthy}/{times})", "lost": 0}


def fault_flood(svc: Service, pngs: list[bytes]) -> dict:
    statuses: Counter = Counter()
    retry = set()
    lock = threading.Lock()
    limits = httpx.get(svc.url + "/api/stats", timeout=30).json()["limits"]
    active, waiting = limits["max_active"], limits["max_waiting"]
    n = 3 * (active + waiting)
    start = threading.Barrier(n)

    def one(i: int) -> None:
        with httpx.Client(base_url=svc.url, timeout=120) as c:
            start.wait()  # all at once: more than the service serves and queues together
            r = c.post("/api/search", files={"image": ("q.png", pngs[i % len(pngs)], "image/png")})
            with lock:
                statuses[r.status_code] += 1
                if r.status_code == 503:
                    retry.add(str(r.headers.get("retry-after", "missing")))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = ", ".join(f"{n}x {s}" for s, n in sorted(statuses.items()))
    return {"fault": f"{n} concurrent searches (limits: {active} served at once, {waiting} waiting)", "times": 1,
            "happened": f"{text}" + (f"; every 503 with Retry-After: {', '.join(sorted(retry))} s" if retry else ""),
            "lost": 0,
            "five_xx_other_than_503": sum(n for s, n in statuses.items() if s >= 500 and s != 503)}


def fault_kill9(svc: Service, ledger: Ledger, pngs: list[bytes], removable: list[int], times: int = 3,
                seed: int = 1) -> tuple[dict, Service]:
    rng = np.random.default_rng(seed)
    applied, in_flight = 0, 0
    for _ in range(times):
        stop = threading.Event()
        cut = Counter()

        def writer(w: int, url: str = svc.url, stop: threading.Event = stop, cut: Counter = cut) -> None:
            with httpx.Client(base_url=url, timeout=60, headers=AUTH) as c:
                while not stop.is_set():
                    adding = w % 2 == 0 or not removable
                    item = None if adding else removable.pop()
                    try:
                        if adding:
                            r = c.post("/api/items", files=[("images", ("a.png", pngs[w], "image/png"))])
                            if r.status_code == 201:
                                ledger.add(r.json()["ids"])
                        else:
                            r = c.delete(f"/api/items/{item}")
                            if r.status_code == 200:
                                ledger.remove(item)
                    except httpx.HTTPError:  # in flight when the service died
                        cut["add" if adding else "remove"] += 1
                        if item is not None:
                            with ledger.lock:
                                ledger.uncertain_removes.add(item)
                        return

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        time.sleep(float(rng.uniform(0.5, 2.0)))
        svc.kill9()
        stop.set()
        for t in threads:
            t.join()
        in_flight += sum(cut.values())
        applied += ledger.adopt(svc.index, cut["add"])
        lost, unknown = ledger.lost(svc.index)
        assert lost == 0 and not unknown, (lost, len(unknown))
        svc = Service(svc.index, svc.log_path, svc.extra).start()  # the kernel freed the lock of the dead one
    lost, unknown = ledger.lost(svc.index)
    return ({"fault": "kill -9 of the service during adds and removes (4 writers), then restart", "times": times,
             "happened": f"the file opened each time (checksums verified) and the restart took the lock at once; "
                         f"of {in_flight} requests cut by the kills, {applied} had been saved (found in the file), "
                         "the others not",
             "lost": lost + len(unknown)}, svc)


def fault_restart(svc: Service, ledger: Ledger) -> tuple[dict, Service]:
    svc.stop()
    svc = Service(svc.index, svc.log_path, svc.extra).start()
    count = httpx.get(svc.url + "/api/health", timeout=10).json()["count"]
    lost, unknown = ledger.lost(svc.index)
    return ({"fault": "graceful stop (SIGTERM) and restart", "times": 1,
             "happened": f"lock released on shutdown, count {count} after restart (ledger {len(ledger.present)})",
             "lost": lost + len(unknown) + abs(count - len(ledger.present))}, svc)


def fault_disk_full(index: str, work: Path, pngs: list[bytes]) -> dict:
    mnt = work / "tmpfs"
    mnt.mkdir(exist_ok=True)
    size = os.path.getsize(index)
    room_mb = int(3 * size / 2**20) + 2
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room_mb}m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        return {"fault": "disk full (index on a small tmpfs)", "times": 0, "happened": "not run: needs root",
                "lost": 0}
    svc = None
    try:
        copy = str(mnt / "full.idx")
        shutil.copy(index, copy)
        svc = Service(copy, work / "server-diskfull.log").start()
        from attnhash.index import open_index

        ledger = Ledger(open_index(copy).all_ids())
        free = shutil.disk_usage(mnt).free
        with open(mnt / "filler", "wb") as f:  # leave less room than a save needs
            f.write(b"\0" * max(0, free - size // 2))
        statuses: Counter = Counter()
        with httpx.Client(base_url=svc.url, timeout=60, headers=AUTH) as c:
            for i in range(20):
                r = c.post("/api/items", files=[("images", ("a.png", pngs[i], "image/png"))])
                statuses[r.status_code] += 1
                if r.status_code == 201:
                    ledger.add(r.json()["ids"])
            before = c.get("/api/health").json()["count"]
            searching = c.get("/api/search/by-id/" + str(next(iter(ledger.present)))).status_code
            os.unlink(mnt / "filler")
            after = Counter()
            for i in range(20):
                r = c.post("/api/items", files=[("images", ("a.png", pngs[i], "image/png"))])
                after[r.status_code] += 1
                if r.status_code == 201:
                    ledger.add(r.json()["ids"])
            count = c.get("/api/health").json()["count"]
        svc.stop()
        lost, unknown = ledger.lost(copy)
        return {"fault": "disk full (index on a small tmpfs) during adds, then room again", "times": 20,
                "happened": f"full: {dict(statuses)} (count stayed {before}, searches {searching}); room again: "
                            f"{dict(after)}, count {count}, file opens",
                "lost": lost + len(unknown)}
    finally:
        if svc is not None and svc.proc.poll() is None:
            svc.stop()
        subprocess.run(["umount", "--lazy", str(mnt)], capture_output=True)


# ---- main -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", help="index file to serve (a copy is used; default: run `attnhash demo`)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2000, help="requests per client in the mixed phase")
    ap.add_argument("--workdir", help="where the demo run and the index copy go (default: a temporary folder)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT / "src"))
    from attnhash.codefile import CodeSet
    from attnhash.index import open_index

    work = Path(args.workdir or tempfile.mkdtemp(prefix="attnhash-load-"))
    work.mkdir(parents=True, exist_ok=True)
    source = args.index
    t_prep = time.perf_counter()
    if source is None:
        source = str(work / "runs" / "demo" / "database.idx")
        if not os.path.exists(source):
            attnhash("demo", "--out", str(work / "runs"), "--quiet", check=True)
    index = str(work / "served.idx")
    for leftover in (index + ".uploads",):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.copy(source, index)
    initial = open_index(index).all_ids().copy()
    bits = open_index(index).bits
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(initial)
    removable_all = shuffled[: args.clients * 300].tolist()  # half for the mixed load, half for the kills
    searchable = shuffled[args.clients * 300 :].tolist()  # never removed: searches by id always find them
    removable = [removable_all[c::args.clients][: len(removable_all) // args.clients // 2] for c in range(args.clients)]
    kill_removable = removable_all[len(removable_all) // 2 :]
    pngs = query_pngs(500)
    bad = bad_requests(pngs)
    big = zero_png(6000, 6000, pattern=True)
    fp = open_index(index).fingerprint
    rng_codes = np.random.default_rng(5).integers(0, 256, (5, bits // 8), dtype=np.uint8)
    codes_file = str(work / "cli.npz")
    CodeSet(rng_codes, bits, fp, paths=[f"/cli/{j}.png" for j in range(5)]).save(codes_file)
    prep_s = time.perf_counter() - t_prep

    ledger = Ledger(initial)
    log = work / "server.log"
    log.write_text("")
    svc = Service(index, log).start()
    faults: list[dict] = []
    try:
        # warm-up: first forward passes, the dataset behind the thumbnails, the radius tables, page cache
        with httpx.Client(base_url=svc.url, timeout=60) as c:
            for q in pngs[:20]:
                c.post("/api/search", files={"image": ("q.png", q, "image/png")})
            c.get(f"/api/items/{searchable[0]}/image")
            c.get(f"/api/search/by-id/{searchable[0]}", params={"radius": 2})
        rss_start = svc.rss_mb()
        # 1. bursts of concurrent 36 MP uploads, with an RSS sampler
        samples: list[float] = []
        sampling = threading.Event()

        def sampler() -> None:
            while not sampling.is_set():
                samples.append(svc.rss_mb())
                time.sleep(0.02)

        threading.Thread(target=sampler, daemon=True).start()
        bursts = [burst_36mp(svc.url, args.clients, big) for _ in range(3)]
        burst_peak = svc.peak_rss_mb()
        # 2. mixed load
        mixed = mixed_load(svc.url, args.clients, args.requests, pngs, bad, ledger, searchable, removable)
        sampling.set()
        stats = httpx.get(svc.url + "/api/stats", timeout=30).json()
        peak_rss = svc.peak_rss_mb()
        count_after_load = stats["count"]
        # 3. faults
        faults.append(fault_cli_writer(svc, work, codes_file, ledger))
        faults.append(fault_aborted_uploads(svc))
        faults.append(fault_flood(svc, pngs))
        fault, svc = fault_kill9(svc, ledger, pngs, kill_removable)
        faults.append(fault)
        fault, svc = fault_restart(svc, ledger)
        faults.append(fault)
        final_count = httpx.get(svc.url + "/api/health", timeout=30).json()["count"]
    finally:
        svc.stop()
    faults.append(fault_disk_full(index, work, pngs))
    lost_end, unknown_end = ledger.lost(index)
    file_count = len(open_index(index))
    expected = len(ledger.present)

    res = {
        "when": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2),
        "command": "python benchmarks/" + " ".join([os.path.basename(__file__)] + (argv if argv is not None
                                                                                   else sys.argv[1:])),
        "index_items": int(len(initial)), "bits": bits, "run": stats["model"]["run_dir"], "prep_s": prep_s,
        "clients": args.clients, "requests_per_client": args.requests,
        "bursts_36mp": bursts, "rss_mb": {"after_warmup": rss_start, "peak_after_bursts": burst_peak,
                                          "peak_after_mixed": peak_rss, "sampled_max": max(samples or [0])},
        "mixed": mixed, "count_after_load": count_after_load,
        "acknowledged": {"added": len(ledger.added), "removed": len(ledger.removed)},
        "faults": faults, "final": {"service_count": final_count, "file_count": file_count, "expected": expected,
                                    "lost": lost_end + len(unknown_end)},
        "server_load": stats.get("load"), "forward_passes": stats["model"]["forward_passes"],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "load_test.json").write_text(json.dumps(res, indent=2))
    md = render(res)
    (out / "load_test.md").write_text(md)
    print(md)
    ok = (mixed["server_errors"] == 0 and mixed["unexpected_count"] == 0 and final_count == expected == file_count
          and all(f["lost"] == 0 for f in faults) and res["final"]["lost"] == 0 and peak_rss < 2048)
    return 0 if ok else 1


def render(res: dict) -> str:
    m = res["mixed"]
    v = m["valid"]
    lines = [
        "# Service load and fault test",
        "",
        f"{res['when']}, {res['cpus']} CPU cores (load average {res['load_average']} at the end), loopback only. "
        f"Command: `{res['command']}`",
        "",
        f"The service (`attnhash serve`, its own process, writes on with a token) over the demo's index: "
        f"{res['index_items']:,} Fashion-MNIST database images, {res['bits']}-bit codes, run `{res['run']}`.",
        "",
        f"## Mixed load: {res['clients']} clients x {res['requests_per_client']:,} requests",
        "",
        f"{m['requests']:,} requests in {m['wall_s']:.1f} s ({m['throughput_rps']:.0f}/s): searches by image "
        "(top-10 and radius 2) and by id, thumbnails, adds (with the token), removes, and 10% bad inputs. "
        f"5xx other than deliberate 503: **{m['server_errors']}**; 503 (saturated, with Retry-After): "
        f"{m['deliberate_503']}; answers other than the one each request must get: **{m['unexpected_count']}**.",
        "",
        f"Valid requests: p50 **{v['p50_ms']:.0f} ms**, p90 {v['p90_ms']:.0f} ms, p99 **{v['p99_ms']:.0f} ms**, "
        f"max {v['max_ms']:.0f} ms.",
        "",
        "| request | n | p50 | p99 | statuses |",
        "|---|---|---|---|---|",
    ]
    for kind, d in m["by_kind"].items():
        st = ", ".join(f"{s}: {n}" for s, n in sorted(d["statuses"].items()))
        lines.append(f"| {kind} | {d['n']} | {d['p50_ms']:.0f} ms | {d['p99_ms']:.0f} ms | {st} |")
    r = res["rss_mb"]
    b = res["bursts_36mp"]
    lines += [
        "",
        "## Memory: concurrent 36-megapixel uploads",
        "",
        f"Three bursts of {res['clients']} concurrent searches, each uploading a 6000 x 6000 PNG "
        f"({'; '.join(', '.join(f'{n}x {s}' for s, n in x['statuses'].items()) for x in b)}; "
        f"p50 {np.median([x['p50_ms'] for x in b]):.0f} ms). Peak RSS of the service (VmHWM): "
        f"**{r['peak_after_bursts']:.0f} MB** after the bursts, **{r['peak_after_mixed']:.0f} MB** after the "
        f"mixed load too (after warm-up: {r['after_warmup']:.0f} MB; target < 2048 MB).",
        "",
        "## Faults",
        "",
        "| fault | times | what happened | items lost |",
        "|---|---|---|---|",
    ]
    for f in res["faults"]:
        lines.append(f"| {f['fault']} | {f['times']} | {f['happened']} | **{f['lost']}** |")
    fin = res["final"]
    lines += [
        "",
        f"Count at the end: service **{fin['service_count']:,}**, file {fin['file_count']:,}, expected from the "
        f"acknowledged changes **{fin['expected']:,}** ({res['index_items']:,} + {res['acknowledged']['added']:,} "
        f"added - {res['acknowledged']['removed']:,} removed, and the in-flight changes the kills let through); "
        f"acknowledged changes missing from the file: **{fin['lost']}**.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
