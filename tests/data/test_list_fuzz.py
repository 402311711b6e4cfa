"""Fuzzing the list-file parser (hypothesis): any text, and list files assembled from real and missing paths
(with spaces), label vectors and class ids (good and bad), comments, blank lines, CRLF, a BOM and stray
unicode, either give a consistent source (every path an existing file, one 0/1 label row per item) or are
refused with one DataError naming the list file; nothing else."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnhash.data import read_list_file
from attnhash.errors import DataError

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FILES = ["a.png", "b c.png", "sub/d.jpg", "sub/e f g.png", "ü.png"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("lists")
    for rel in FILES:
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"not decoded by the parser")
    (folder / "a_folder.png").mkdir()
    return str(folder)


_path = st.sampled_from(FILES + ["missing.png", "sub", "a_folder.png", "../a.png", "sub/../a.png", "/etc/passwd",
                                 "a.png\x00", "\u00a0a.png"])
_label_token = st.sampled_from(["0", "1", "2", "10", "-1", "+1", "01", "1.0", "x", "\u0661", "１", "00"])
_line = st.one_of(
    st.tuples(_path, st.lists(_label_token, max_size=6)).map(lambda t: " ".join([t[0], *t[1]])),
    st.sampled_from(["", "   ", "# comment", "#", "\t", "a.png\t1", "  a.png  0 1  "]),
    st.text(max_size=30),
)


def check(root: str, text: str, num_classes: int | None, newline: str = "\n", bom: bool = False) -> None:
    path = os.path.join(root, "list.txt")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(("\ufeff" if bom else "") + text.replace("\n", newline))
    try:
        source = read_list_file(path, num_classes=num_classes)
    except DataError as err:
        assert str(err).startswith(path) and "\n" not in str(err)
        return
    labels = np.asarray(source.labels)
    assert labels.ndim == 2 and labels.shape[0] == len(source) >= 1
    assert set(np.unique(labels).tolist()) <= {0, 1}
    if num_classes is not None:
        assert labels.shape[1] == num_classes
    for i in range(len(source)):
        assert os.path.isfile(source.path(i))


@SETTINGS
@given(lines=st.lists(_line, max_size=12), num_classes=st.one_of(st.none(), st.integers(1, 12)),
       newline=st.sampled_from(["\n", "\r\n", "\r"]), bom=st.booleans())
def test_assembled_list_files(root, lines, num_classes, newline, bom):
    check(root, "\n".join(lines), num_classes, newline, bom)


@SETTINGS
@given(text=st.text(max_size=400), num_classes=st.one_of(st.none(), st.integers(1, 4)))
def test_any_text(root, text, num_classes):
    check(root, text, num_classes)


def test_a_good_list_file_reads(root):
    path = os.path.join(root, "good.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("# images\na.png 1 0\nb c.png 0 1\nsub/e f g.png 1 1\n")
    source = read_list_file(path)
    assert len(source) == 3 and np.asarray(source.labels).tolist() == [[1, 0], [0, 1], [1, 1]]


def test_undecodable_bytes_are_one_line(root):
    path = os.path.join(root, "bad.txt")
    with open(path, "wb") as f:
        f.write(b"a.png 1\n\xff\xfe\x00 0\n")
    with pytest.raises(DataError, match="not a UTF-8 text file"):
        read_list_file(path)
