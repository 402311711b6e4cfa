"""Your own images, end to end: a class folder or a flat folder trains, indexes and searches with no protocol
flag; unreadable files are skipped and listed; names that are not UTF-8 survive; runs are never overwritten."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnhash.cli import main
from attnhash.index import open_index
from index_fixtures import fmnist_images, make_tiny_run, write_image_folder

TINY = ["--bits", "16", "--epochs", "1", "--image-size", "32", "--backbone", "resnet18", "--weights", "none",
        "--batch-size", "16", "-q"]


def class_folder(root: Path, per_class: int, classes: int = 5) -> Path:
    """Real Fashion-MNIST test images as PNGs, `per_class` in each of `classes` class folders."""
    data = fmnist_images(2000)
    if data is None:
        pytest.skip("Fashion-MNIST not installed")
    images, labels = data
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(labels == c)[:per_class]):
            Image.fromarray(images[i]).save(root / f"class{c}" / f"{k:03d}.png")
    return root


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_of_five_classes_trains_without_a_protocol_and_is_left_as_it_was(tmp_path, capsys):
    photos = class_folder(tmp_path / "photos", per_class=20)
    before = snapshot(photos)
    assert main(["train", "--dataset", str(photos), "--method", "dpsh", "--name", "mine", "--out",
                 str(tmp_path / "runs"), *TINY]) == 0
    out = capsys.readouterr().out
    assert "(stratified): 10 query / 50 train / 40 database" in out
    assert snapshot(photos) == before  # nothing written into the user's folder
    assert (tmp_path / "runs" / "mine" / "model.safetensors").exists()
    assert main(["evaluate", str(tmp_path / "runs" / "mine"), "--json", "--no-plots"]) == 0
    # the same name again is refused, with the way out named
    assert main(["train", "--dataset", str(photos), "--method", "dpsh", "--name", "mine", "--out",
                 str(tmp_path / "runs"), *TINY]) == 2
    assert "holds a trained run already; pass --force" in capsys.readouterr().err
    assert main(["train", "--dataset", str(photos), "--method", "dpsh", "--name", "mine", "--out",
                 str(tmp_path / "runs"), "--force", *TINY]) == 0


def test_two_images_per_class_are_enough(tmp_path, capsys):
    photos = class_folder(tmp_path / "few", per_class=2)
    assert main(["train", "--dataset", str(photos), "--method", "dpsh", "--name", "few", "--out",
                 str(tmp_path / "runs"), *TINY]) == 0
    assert "(stratified): 5 query / 5 train / 5 database" in capsys.readouterr().out


def test_a_flat_folder_trains_unsupervised_and_shallow_methods_and_is_searched(tmp_path, capsys):
    data = fmnist_images(60)
    if data is None:
        pytest.skip("Fashion-MNIST not installed")
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, img in enumerate(data[0][:60]):
        Image.fromarray(img).save(flat / f"img{i:02d}.png")
    for method in ("itq", "uhga"):
        assert main(["train", "--dataset", str(flat), "--method", method, "--name", method, "--out",
                     str(tmp_path / "runs"), *TINY, "--weights", "auto", "--backbone", "efficientnet_lite0"]) == 0
    run = str(tmp_path / "runs" / "itq")
    assert main(["evaluate", run]) == 2
    assert "has no labels, so a run on it cannot be scored" in capsys.readouterr().err
    assert main(["encode", run, "--images", str(flat), "--out", str(tmp_path / "flat.npz")]) == 0
    assert main(["index", "build", run, "--images", str(flat), "--out", str(tmp_path / "flat.idx")]) == 0
    assert len(open_index(str(tmp_path / "flat.idx"))) == 60
    capsys.readouterr()
    assert main(["search", str(tmp_path / "flat.idx"), str(flat / "img07.png"), "--k", "3", "--json"]) == 0
    assert '"distance": 0' in capsys.readouterr().out


def test_index_build_skips_the_one_bad_file_in_500_and_reports_it(tmp_path, capsys):
    folder = tmp_path / "imgs"
    if not write_image_folder(str(folder), n=499):
        pytest.skip("Fashion-MNIST not installed")
    good = sorted(folder.rglob("*.png"))[0].read_bytes()
    bad = folder / "c0" / "zz_truncated.png"
    bad.write_bytes(good[: len(good) // 2])  # a real PNG, cut in the middle of its pixel data
    run = make_tiny_run(str(tmp_path / "run"))
    assert main(["index", "build", run, "--images", str(folder), "--out", str(tmp_path / "db.idx")]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image(s)" in err and "db.idx.skipped.tsv" in err
    assert len(open_index(str(tmp_path / "db.idx"))) == 499
    report = (tmp_path / "db.idx.skipped.tsv").read_text().splitlines()
    assert report[0] == "path\treason" and len(report) == 2 and report[1].startswith(str(bad) + "\t")
    # --strict stops at the first bad file with the one-line error
    assert main(["index", "build", run, "--images", str(folder), "--out", str(tmp_path / "strict.idx"),
                 "--strict"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(bad) in err and not (tmp_path / "strict.idx").exists()


def test_file_names_that_are_not_utf8_survive_end_to_end(tmp_path):
    data = fmnist_images(3)
    if data is None:
        pytest.skip("Fashion-MNIST not installed")
    folder = tmp_path / "odd"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9-\xff.png")  # Latin-1 bytes: not UTF-8
    for i, fn in enumerate([name, "b.png", "c.png"]):
        Image.fromarray(data[0][i]).save(os.path.join(folder, fn))
    run = make_tiny_run(str(tmp_path / "run"))

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "attnhash", *args], capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout

    cli("index", "build", run, "--images", str(folder), "--out", str(tmp_path / "odd.idx"))
    index = open_index(str(tmp_path / "odd.idx"))
    paths = [m["path"] for m in index.metadata(index.all_ids())]
    assert os.path.join(str(folder), name) in paths
    out = cli("search", str(tmp_path / "odd.idx"), os.path.join(str(folder), name), "--k", "1")
    assert os.fsencode(os.path.join(str(folder), name)) in out  # printed as the file's own bytes


def test_photos_code_as_they_look(photos, tmp_path):
    """In a flat folder, a JPEG stored sideways with EXIF orientation 6 codes like the same photo saved upright,
    not like its stored pixels; a 16-bit grey PNG codes within 2 bits of the same image in 8 bits."""
    from attnhash.data import open_dataset
    from attnhash.inference import Encoder

    flat = tmp_path / "flat"
    flat.mkdir()
    upright = Image.open(photos[1]).convert("RGB")
    upright.save(flat / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn right to display": the stored pixels are turned a quarter left
    upright.transpose(Image.Transpose.ROTATE_90).save(flat / "sideways.jpg", quality=95, exif=exif)
    upright.transpose(Image.Transpose.ROTATE_90).save(flat / "stored_pixels.jpg", quality=95)
    grey = np.asarray(upright.convert("L"))
    Image.fromarray(grey).save(flat / "grey8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(flat / "grey16.png")
    for p in photos[2:12]:  # more photos for the fit
        Image.open(p).convert("RGB").save(flat / p.name)
    assert main(["train", "--dataset", str(flat), "--method", "lsh", "--bits", "64", "--image-size", "96",
                 "--name", "lsh", "--out", str(tmp_path / "runs"), "-q"]) == 0
    encoder = Encoder(tmp_path / "runs" / "lsh", device="cpu")
    source = open_dataset(str(flat))
    names = [Path(source.describe(i)).name for i in range(len(source))]
    codes = np.unpackbits(encoder.encode_source(source, progress=False), axis=1)

    def bits_apart(a, b):
        return int((codes[names.index(a)] != codes[names.index(b)]).sum())

    assert bits_apart("upright.jpg", "sideways.jpg") <= 2
    # what the sideways file coded like before: 10-19 of 64 bits away for this LSH run on four of the photos
    assert bits_apart("upright.jpg", "stored_pixels.jpg") >= 8
    assert bits_apart("grey8.png", "grey16.png") <= 2
