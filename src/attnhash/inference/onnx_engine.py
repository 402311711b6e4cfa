"""The network of a run as ONNX: exported once, run by onnxruntime with the same codes as PyTorch.

`export_onnx(run, path)` writes the whole hashing network (uint8 RGB images in, the real outputs z out; a code
bit is z >= 0) and, in the model's metadata, its preprocessing contract and identity: input size and layout,
the code length, the class names, and the fingerprint of the checkpoint it came from, so an index built
with the ONNX model carries the same model fingerprint as one built with PyTorch and the two are
interchangeable. `OnnxEncoder` has the Encoder's interface and reads images the same way (ImageDataset).
Loading an ONNX file runs no Python code (protobuf), unlike TorchScript or pickle files.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch

from attnhash.atomic import atomic_write
from attnhash.codes import pack_codes, sign
from attnhash.config import config_from_dict
from attnhash.data import FileSource, Skipped, resize_image, to_rgb_array
from attnhash.errors import CheckpointError, DataError
from attnhash.inference.encode import image_batches
from attnhash.inference.encoder import Encoder
from attnhash.inference.progress import Progress
from attnhash.version import __version__

ONNX_FORMAT = "attnhash-onnx-1"
INPUT_CONTRACT = ("uint8 RGB, N x 3 x S x S (NCHW), each image converted as attnhash.data.images does (EXIF "
                  "orientation, modes) and resized to S x S by attnhash.data.resize_image (bilinear); the network "
                  "normalises it itself")


class _CodeOutputs(torch.nn.Module):
    """The network with one output: z (a code bit is z >= 0)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)["z"]


def export_onnx(run: str | Path, path: str | Path, opset: int = 17) -> Path:
    """Write the run's network as an ONNX model with its preprocessing contract in the metadata."""
    encoder = Encoder(run, device="cpu")
    if encoder.network_spec.get("kind") != "deep":
        raise CheckpointError(f"{run}: a {encoder.config.method.name} run hashes with NumPy on backbone features; "
                              "only deep networks are exported to ONNX")
    network = encoder.folded_model.float().to(memory_format=torch.contiguous_format).eval()  # what Encoder runs
    size = encoder.image_size
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the tracer's notes on shape arithmetic: the batch is the only free axis
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the TorchScript-based exporter, on purpose: the torch.export one needs onnxscript and gives no more here
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_CodeOutputs(network), (example,), buffer, input_names=["images"], output_names=["z"],
                          dynamic_axes={"images": {0: "batch"}, "z": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    facts = {
        "attnhash.format": ONNX_FORMAT, "attnhash.version": __version__,
        "attnhash.fingerprint": encoder.fingerprint, "attnhash.bits": str(encoder.bits),
        "attnhash.image_size": str(size), "attnhash.input": INPUT_CONTRACT,
        "attnhash.output": "z: float32 N x K; code bit k of an image = z[k] >= 0",
        "attnhash.class_names": json.dumps(encoder.class_names or []),
        "attnhash.run_dir": str(Path(encoder.run_dir).resolve()),
        "attnhash.config": json.dumps(encoder.config.to_dict()),
    }
    for key, value in facts.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    data = model.SerializeToString()
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return Path(path)


def export_torchscript(run: str | Path, path: str | Path) -> Path:
    """A traced TorchScript module of the run's network (uint8 images in, z out), written atomically."""
    encoder = Encoder(run, device="cpu")
    if encoder.network_spec.get("kind") != "deep":
        raise CheckpointError(f"{run}: only deep networks are exported")
    network = encoder.folded_model.float().to(memory_format=torch.contiguous_format).eval()  # what Encoder runs
    size = encoder.image_size
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(_CodeOutputs(network), torch.zeros(2, 3, size, size, dtype=torch.uint8))
    atomic_write(path, lambda tmp: traced.save(tmp))
    return Path(path)


class OnnxEncoder:
    """The Encoder's interface over an exported model, run by onnxruntime on the CPU."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / "model.onnx"
        if not path.is_file():
            raise CheckpointError(f"{path}: no such ONNX model (write it with `attnhash export RUN --onnx`)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own error types
            raise CheckpointError(f"{path}: not a readable ONNX model ({str(err).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("attnhash.format") != ONNX_FORMAT:
            raise CheckpointError(f"{path}: not an ONNX model exported by attnhash (no {ONNX_FORMAT} metadata)")
        self.path = str(path)
        self.fingerprint = meta["attnhash.fingerprint"]
        self.bits = int(meta["attnhash.bits"])
        self.image_size = int(meta["attnhash.image_size"])
        self.class_names = json.loads(meta.get("attnhash.class_names", "[]")) or None
        self.run_dir = meta.get("attnhash.run_dir", str(path.parent))
        self.config = config_from_dict(json.loads(meta["attnhash.config"]))  # the run's, as exported

    def _z(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(["z"], {"images": np.ascontiguousarray(images, dtype=np.uint8)})[0]

    def _resized(self, images: Sequence, start: int) -> np.ndarray:
        return np.stack([resize_image(to_rgb_array(img, f"image {start + i}"), self.image_size)
                         for i, img in enumerate(images)]).transpose(0, 3, 1, 2)

    def encode_images(self, images: Sequence, batch_size: int = 128) -> np.ndarray:
        return self.encode_images_with_outputs(images, batch_size)[0]

    def encode_images_with_outputs(self, images: Sequence, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """PIL images or HxWx3 uint8 arrays -> (packed codes, real-valued outputs z (n, bits) float32), as the
        PyTorch Encoder's: the codes are z >= 0, and z ranks ties when a search reranks."""
        out = [self._z(self._resized(images[s : s + batch_size], s)) for s in range(0, len(images), batch_size)]
        z = np.concatenate(out) if out else np.zeros((0, self.bits), np.float32)
        return pack_codes(sign(z)), z

    def encode_paths(self, paths: Sequence[str | Path], batch_size: int = 128,
                     skipped: Skipped | None = None) -> np.ndarray:
        files = FileSource([str(Path(p).absolute()) for p in paths], None, name="files")
        return self.encode_source(files, batch_size=batch_size, progress=False, skipped=skipped)

    def encode_source(self, source, indices=None, batch_size: int = 256, progress: bool = True,
                      skipped: Skipped | None = None, **_ignored) -> np.ndarray:
        """Items of an ImageSource -> packed codes, read exactly as the PyTorch Encoder reads them."""
        return pack_codes(sign(self.encode_source_outputs(source, indices, batch_size, progress, skipped=skipped)))

    def encode_source_outputs(self, source, indices=None, batch_size: int = 256, progress: bool = True,
                              skipped: Skipped | None = None, **_ignored) -> np.ndarray:
        """Real-valued outputs z (n, bits) float32 of items of an ImageSource (the codes are z >= 0)."""
        indices = np.arange(len(source)) if indices is None else np.asarray(indices)
        report = Progress(len(indices), "encode (onnx)", enabled=progress)
        out = []
        for batch in image_batches(source, indices, self.image_size, batch_size):
            images = batch["image"].numpy()
            ok = np.array([not e for e in batch["error"]], dtype=bool)
            for pos, error in zip(batch["index"].tolist(), batch["error"]):
                if error:
                    if skipped is None:
                        raise DataError(error)
                    skipped.add(int(indices[pos]), source.describe(int(indices[pos])), error)
            images = images[ok]
            if len(images):
                out.append(self._z(images))
            report.update(len(batch["image"]))
        report.close()
        return np.concatenate(out) if out else np.zeros((0, self.bits), np.float32)


def load_encoder(run: str | Path, engine: str = "torch", device: str = "auto",
                 bits: int | None = None) -> Encoder | OnnxEncoder:
    """The encoder of a run: its PyTorch network, or (engine "onnx") its exported model.onnx (or an .onnx file);
    `bits`: refuse a model that makes codes of another length."""
    if engine == "torch":
        return Encoder(run, device=device, bits=bits)
    if engine != "onnx":
        raise CheckpointError(f"unknown engine {engine!r}: torch or onnx")
    encoder = OnnxEncoder(run)
    if bits is not None and bits != encoder.bits:
        raise CheckpointError(f"{encoder.path}: the model makes {encoder.bits}-bit codes, but {bits} bits were asked")
    return encoder
