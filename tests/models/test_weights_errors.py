"""A weights file that torch will not load safely: one line that never repeats torch's advice to load it with
weights_only=False (that would run code from the file), and nothing in the file is ever run."""

from __future__ import annotations

import collections

import pytest
import torch

from attnhash.errors import CheckpointError
from attnhash.models.backbones.weights import read_state_dict

RAN = []


class Payload:
    def __reduce__(self):
        return (RAN.append, ("the file's code ran",))


def test_unsafe_or_broken_weights_files_are_refused_without_unsafe_advice(tmp_path):
    evil, junk, good = tmp_path / "evil.pth", tmp_path / "junk.pth", tmp_path / "good.pth"
    torch.save({"conv.weight": torch.zeros(2), "x": Payload()}, evil)
    junk.write_bytes(b"not a zip, not a pickle")
    torch.save(collections.OrderedDict(w=torch.ones(3)), good)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(evil)
    text = str(err.value)
    assert "evil.pth" in text and "Python objects" in text and "never runs code" in text
    with pytest.raises(CheckpointError) as err2:
        read_state_dict(junk)
    assert "not a file of tensors written by torch.save" in str(err2.value)
    for message in (text, str(err2.value)):
        assert "weights_only" not in message and "\n" not in message and "\x1b" not in message
    assert RAN == []
    assert list(read_state_dict(good)) == ["w"]
