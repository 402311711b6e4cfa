"""Encoder: a trained run folder -> packed binary codes for images.

Everything downstream (evaluation, the index, the search service) gets codes from here, so the
preprocessing of a query image is exactly the preprocessing of the database images. The network is
rebuilt from the spec saved in the checkpoint: encoding never needs the method that trained the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from attnhash.codes import code_bytes, pack_codes, sign
from attnhash.data import FileSource, Skipped, resize_image, to_rgb_array
from attnhash.errors import CheckpointError
from attnhash.inference.device import pick_device, prepare_network
from attnhash.inference.encode import codes_from_batches, encode_indices, outputs_from_batches
from attnhash.models import inference_copy, network_from_spec
from attnhash.models.backbones.weights import state_mismatch
from attnhash.runs import RunFolder


def load_state_into(network: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """load_state_dict with one clear line on mismatch instead of PyTorch's multi-line report."""
    problems = state_mismatch(network.state_dict(), state)
    if problems:
        raise CheckpointError(f"{path}: weights do not fit the network of its config ({'; '.join(problems)})")
    network.load_state_dict(state, strict=True)


class Encoder:
    """Loads a run once; encodes images, sources or lists of image files to packed codes.

    `bits`: refuse the run unless it makes codes of this length.
    """

    def __init__(self, run: str | Path | RunFolder, device: str = "auto", bits: int | None = None):
        self.run = run if isinstance(run, RunFolder) else RunFolder(run)
        checkpoint = self.run.load_model()
        self.run_dir = str(run)
        self.config = checkpoint.config
        self.meta = checkpoint.meta
        self.network_spec = checkpoint.network
        self.fingerprint = checkpoint.fingerprint
        self.bits = checkpoint.config.model.bits
        if bits is not None and bits != self.bits:
            raise CheckpointError(f"{checkpoint.path}: the checkpoint makes {self.bits}-bit codes, but {bits} bits "
                                  "were asked")
        self.image_size = checkpoint.config.data.image_size
        self.class_names = checkpoint.meta.get("class_names")
        self.device = pick_device(device)
        self.model = network_from_spec(checkpoint.network)
        load_state_into(self.model, checkpoint.state, checkpoint.path)
        prepare_network(self.model, self.device)
        self._folded: torch.nn.Module | None = None

    @property
    def folded_model(self) -> torch.nn.Module:
        """The network with its BatchNorms folded (attnhash.models.inference_copy), made on first use: what
        encoding runs, and what export writes (so onnxruntime computes with the very same folded weights).
        `model` stays unfolded for what needs the checkpoint's own layers: gradients and attention maps
        (explain), and filling the stage cache with the numbers training reads."""
        if self._folded is None:
            self._folded = prepare_network(inference_copy(self.model), self.device)
        return self._folded

    @classmethod
    def from_run(cls, run_dir: str | Path, **kwargs) -> "Encoder":
        return cls(run_dir, **kwargs)

    def _batch(self, images: Sequence) -> torch.Tensor:
        arrays = [resize_image(to_rgb_array(img, f"image {i}"), self.image_size) for i, img in enumerate(images)]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)

    def encode_images(self, images: Sequence, batch_size: int = 128) -> np.ndarray:
        """PIL images or HxWx3 uint8 arrays -> packed uint8 codes (n, bits/8)."""
        batches = (self._batch(images[s : s + batch_size]) for s in range(0, len(images), batch_size))
        codes = codes_from_batches(self.folded_model, batches, self.device, packed=True)
        return codes if len(codes) else np.zeros((0, code_bytes(self.bits)), np.uint8)

    def encode_images_with_outputs(self, images: Sequence, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """PIL images or HxWx3 uint8 arrays -> (packed codes (n, ceil(bits/8)), real-valued outputs z (n, bits)
        float32); the codes are sign(z), exactly those of encode_images. z ranks ties (<tanh(z), b>)."""
        batches = (self._batch(images[s : s + batch_size]) for s in range(0, len(images), batch_size))
        z = outputs_from_batches(self.folded_model, batches, self.device)
        if len(z) == 0:
            return np.zeros((0, code_bytes(self.bits)), np.uint8), np.zeros((0, self.bits), np.float32)
        return pack_codes(sign(z)), z

    def encode_paths(self, paths: Sequence[str | Path], batch_size: int = 128,
                     skipped: Skipped | None = None) -> np.ndarray:
        """Image files -> packed codes (of the readable ones when `skipped` collects the others)."""
        files = FileSource([str(Path(p).absolute()) for p in paths], None, name="files")
        return self.encode_source(files, batch_size=batch_size, progress=False, skipped=skipped)

    def encode_source(self, source, indices=None, batch_size: int = 256, progress: bool = True,
                      use_stage_cache: bool = False, skipped: Skipped | None = None) -> np.ndarray:
        """Items of an ImageSource (all, or the given indices) -> packed codes, in that order.

        use_stage_cache: when the run was trained with train.frozen_cache=disk, read its frozen stages'
        output from the shared disk cache (computing what is missing) instead of running them again.
        skipped: None = the first unreadable image raises its one-line DataError; a Skipped = unreadable
        images are listed there and left out, the codes following the readable items in order.
        """
        codes = self._encode_indices(source, indices, batch_size, progress, use_stage_cache, skipped=skipped,
                                     packed=True)
        return codes if len(codes) else np.zeros((0, code_bytes(self.bits)), np.uint8)

    def encode_source_outputs(self, source, indices=None, batch_size: int = 256, progress: bool = True,
                              use_stage_cache: bool = False) -> np.ndarray:
        """Real-valued outputs z (n, bits) float32 of items of an ImageSource (the codes are sign(z))."""
        return self._encode_indices(source, indices, batch_size, progress, use_stage_cache, outputs=True)

    def _encode_indices(self, source, indices, batch_size: int, progress: bool, use_stage_cache: bool, **kwargs):
        """encode_indices through the folded network, the frozen stages read from the disk cache (filled by the
        unfolded network) when asked and the run was trained with it."""
        indices = np.arange(len(source)) if indices is None else np.asarray(indices)
        cached = 0
        if use_stage_cache and self.config.train.frozen_cache == "disk":
            cached = int(self.meta.get("frozen_stages", 0))
        return encode_indices(self.folded_model, source, indices, self.image_size, self.device, batch_size,
                              progress, cached_stages=cached, stage_model=self.model, **kwargs)
