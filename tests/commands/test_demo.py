"""The README's main job, `attnhash demo`, end to end on a small real Fashion-MNIST subset."""

from __future__ import annotations

import subprocess
import sys

SMALL = ["data.train_limit=300", "data.query_limit=40", "data.database_limit=800", "train.epochs=1"]


def test_demo_trains_evaluates_indexes_and_shows_a_query(fmnist, tmp_path):
    cmd = [sys.executable, "-m", "attnhash", "demo", "-q", "--bits", "16", "--out", str(tmp_path / "runs"),
           "--index-out", str(tmp_path / "db.idx")]
    for override in SMALL:
        cmd += ["--set", override]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "mAP@ALL = " in out and "800 codes x 2 bytes" in out
    rows = [line.split() for line in out.splitlines()]
    ranks = [int(r[0]) for r in rows if len(r) >= 5 and r[0].isdigit() and r[-1] in ("yes", "no")]
    assert ranks == list(range(1, 11))
    assert "database items lie within distance" in out and "queries P@10 = " in out
    assert (tmp_path / "db.idx").exists() and (tmp_path / "runs" / "demo" / "demo_top10.png").exists()
    # the picture marks each result: a green frame for each relevant one, a red one for the others
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(tmp_path / "runs" / "demo" / "demo_top10.png").convert("RGB")).astype(int)
    green = (np.abs(pixels - [0x1a, 0x96, 0x41]).sum(axis=2) < 30).sum()
    red = (np.abs(pixels - [0xd7, 0x19, 0x1c]).sum(axis=2) < 30).sum()
    relevant = sum(r[-1] == "yes" for r in rows if len(r) >= 5 and r[0].isdigit())
    assert (green > 200) == (relevant > 0) and (red > 200) == (relevant < 10)
