"""Bad input through the command line: one clear line naming the file and the problem, exit status 2."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from index_fixtures import make_tiny_run


def attnhash(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "attnhash", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def one_line_error(proc, *must_contain):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for text in must_contain:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def run16(tmp_path_factory):
    return make_tiny_run(str(tmp_path_factory.mktemp("run") / "r16"), bits=16)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / name)
    return tmp_path


def test_list_file_with_a_missing_image(images, run16):
    lst = images / "list.txt"
    lst.write_text("a.png 1 0\nmissing.png 0 1\n")
    one_line_error(attnhash("encode", run16, "--images", lst), "list.txt:2", "missing.png", "not found")


def test_list_file_with_a_label_vector_of_the_wrong_length(images, run16):
    lst = images / "list.txt"
    lst.write_text("a.png 1 0\nb.png 0 1 0\n")
    one_line_error(attnhash("encode", run16, "--images", lst), "list.txt:2", "3 values, expected 2")


def test_unreadable_image(images, run16):
    (images / "b.png").write_bytes(b"this is not a png")
    lst = images / "list.txt"
    lst.write_text("a.png 1 0\nb.png 0 1\n")
    one_line_error(attnhash("encode", run16, "--images", lst, "--out", images / "c.npz", "--strict"), "b.png")
    one_line_error(attnhash("encode", run16, "--images", images / "b.png", "--out", images / "d.npz"), "b.png")
    # without --strict the readable images are encoded and the bad one is listed beside the output
    done = attnhash("encode", run16, "--images", lst, "--out", images / "c.npz")
    assert done.returncode == 0 and "skipped 1 unreadable image(s)" in done.stderr
    assert (images / "c.npz.skipped.tsv").read_text().splitlines()[1].startswith(str(images / "b.png") + "\t")


def test_checkpoint_from_another_code_length(images, run16):
    one_line_error(attnhash("encode", run16, "--bits", 32, "--images", images / "a.png"), "model.safetensors",
                   "16-bit", "32 bits")


def test_truncated_checkpoint(images, run16, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run16, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    one_line_error(attnhash("encode", broken, "--images", images / "a.png"), "model.safetensors", "truncated")
    one_line_error(attnhash("evaluate", tmp_path / "nowhere"), "nowhere")


def test_bad_config_values():
    one_line_error(attnhash("train", "--method", "dpsh", "--bits", 3, "--print-config"), "model.bits must be at least 4")
    one_line_error(attnhash("train", "--method", "nosuch", "--print-config"), "unknown method 'nosuch'")
