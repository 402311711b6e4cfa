"""Atomic writes: the old file or the new one, never half; no temporary left behind; usual permissions."""

import os
import stat

import pytest

from attnhash.atomic import atomic_open, atomic_write, atomic_write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_all_three_writers_replace_the_file_with_the_usual_permissions(tmp_path, umask_022):
    target = tmp_path / "sub" / "results.json"
    atomic_write_text(target, "one")
    assert target.read_text() == "one" and mode(target) == 0o644  # not tempfile's 0600
    atomic_write(target, lambda tmp: open(tmp, "w").write("two"))
    assert target.read_text() == "two" and mode(target) == 0o644
    with atomic_open(target, "wb") as f:
        f.write(b"three")
    assert target.read_bytes() == b"three" and mode(target) == 0o644
    assert os.listdir(target.parent) == ["results.json"]


def test_a_writer_that_makes_its_own_private_file_still_gives_the_usual_permissions(tmp_path, umask_022):
    import torch
    from safetensors.torch import save_file

    target = tmp_path / "model.safetensors"
    atomic_write(target, lambda tmp: save_file({"w": torch.zeros(2)}, tmp))  # save_file creates files 0600
    assert mode(target) == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "index.idx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "wb") as f:
            f.write(b"half of the new")
            raise RuntimeError("killed mid-write")

    def failing(tmp):
        open(tmp, "w").write("partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["index.idx"]
