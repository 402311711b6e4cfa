"""Which device a network runs on."""

from __future__ import annotations

import torch


def pick_device(name: str = "auto") -> torch.device:
    """"auto": the GPU when there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare_network(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The network on `device` in eval mode, channels-last on the CPU (faster convolutions there)."""
    network.to(device).eval()
    if device.type == "cpu":
        network.to(memory_format=torch.channels_last)
    return network


# On a CPU the network takes at most this many input pixels at a time, whatever batch a caller decodes, so a
# chunk's activations stay in the CPU's caches. The best chunk in a sweep on 2 cores was 128-256 images at 32 px,
# 64 at 64 px, 16-32 at 96 px, 8 at 224 px: about this many pixels. Against whole batches of 256,
# benchmarks/bench_encode.py measured 1.26x and 1.47x at 64 px and 1.58x and 1.57x at 96 px in two runs (the
# sweep: ~3x at 224 px), with half the peak memory. Images are encoded independently (eval mode), so the chunks
# change no code. The stage caches run the frozen prefix in the same chunks: 0.89-1.00x at 64 px, 1.35-1.59x at
# 96 px, 2.1-3.2x at 224 px in two runs of benchmarks/bench_stagecache.py. OnnxEncoder does not chunk:
# onnxruntime ran 0.73-0.75x as fast in these chunks.
CPU_CHUNK_PIXELS = 256 * 1024


def cpu_chunk(image_size: int) -> int:
    """Images of `image_size` px a CPU encodes at once."""
    return max(1, CPU_CHUNK_PIXELS // (image_size * image_size))


def device_chunks(x: torch.Tensor, image_size: int | None = None) -> tuple[torch.Tensor, ...]:
    """A batch (on its device) as a network should take it: on a CPU in chunks of cpu_chunk(image_size) images
    (image_size: of the images the batch was made from, when x holds a later stage's outputs), channels-last;
    elsewhere whole."""
    if x.device.type != "cpu":
        return (x,)
    return tuple(part.contiguous(memory_format=torch.channels_last)
                 for part in x.split(cpu_chunk(image_size or x.shape[-1])))
