"""On a CPU a batch goes through the PyTorch network in chunks (device.cpu_chunk, measured in
benchmarks/bench_encode.py): the codes and outputs must be those of the whole batch, and the chunk follows the
input images' size even when the batches are stage outputs."""

import numpy as np
import torch

from attnhash.inference import Encoder, device, encode


def test_chunks_give_the_codes_and_outputs_of_whole_batches(lite_run, fmnist, monkeypatch):
    idx = np.arange(60000, 60300)
    encoder = Encoder(lite_run, device="cpu")
    monkeypatch.setattr(device, "CPU_CHUNK_PIXELS", 1 << 40)
    assert device.cpu_chunk(32) >= 256  # each batch of 256 whole
    whole = encoder.encode_source_outputs(fmnist, idx, progress=False)
    monkeypatch.setattr(device, "CPU_CHUNK_PIXELS", 7 * 32 * 32)
    assert device.cpu_chunk(32) == 7  # uneven: each batch's last chunk is short
    chunked = encoder.encode_source_outputs(fmnist, idx, progress=False)
    assert chunked.shape == whole.shape == (300, 64)
    np.testing.assert_array_equal(np.packbits(chunked >= 0, axis=1), np.packbits(whole >= 0, axis=1))
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)
    images = [fmnist.image(int(i)) for i in idx[:20]]
    np.testing.assert_array_equal(encoder.encode_images(images), np.packbits(whole[:20] >= 0, axis=1))


class _Recorder(torch.nn.Module):
    """Records the batch sizes it is given; z = the first 8 inputs of each item."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, start_stage=0):
        self.seen.append(len(x))
        return {"z": x.flatten(1)[:, :8]}


def test_stage_outputs_are_chunked_by_the_images_size_not_their_own(monkeypatch):
    monkeypatch.setattr(device, "CPU_CHUNK_PIXELS", 5 * 32 * 32)
    feats = torch.randn(20, 4, 2, 2)  # stage outputs of 32 px images
    model, cpu = _Recorder(), torch.device("cpu")
    out = encode.outputs_from_batches(model, [feats[:12], feats[12:]], cpu, start_stage=3, image_size=32)
    assert model.seen == [5, 5, 2, 5, 3]
    np.testing.assert_array_equal(out, feats.flatten(1)[:, :8].numpy())
    model.seen.clear()
    codes = encode.codes_from_batches(model, [feats], cpu, start_stage=3, image_size=32)
    assert model.seen == [5, 5, 5, 5] and codes.shape == (20, 8)
