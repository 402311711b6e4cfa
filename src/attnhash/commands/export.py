"""attnhash export RUN --onnx: the run's hashing network for deployment without the training stack."""

from __future__ import annotations

import argparse
from pathlib import Path

from attnhash.errors import AttnHashError


def register(sub) -> None:
    p = sub.add_parser("export", help="export a run's network as ONNX (run by onnxruntime) or TorchScript")
    p.add_argument("run", help="run folder")
    p.add_argument("--onnx", action="store_true", help="write an ONNX model (default: RUN/model.onnx)")
    p.add_argument("--torchscript", action="store_true",
                   help="write a traced TorchScript module (RUN/model.torchscript.pt) for PyTorch deployments; "
                        "attnhash itself never loads it: TorchScript files hold pickled data")
    p.add_argument("--out", help="output file (with one of --onnx / --torchscript)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not (args.onnx or args.torchscript):
        raise AttnHashError("say what to export: --onnx and/or --torchscript")
    if args.out and args.onnx and args.torchscript:
        raise AttnHashError("--out names one file: export --onnx and --torchscript separately")
    if args.onnx:
        from attnhash.inference.onnx_engine import OnnxEncoder, export_onnx

        path = export_onnx(args.run, args.out or Path(args.run) / "model.onnx", opset=args.opset)
        enc = OnnxEncoder(path)
        print(f"{path}: ONNX, {enc.bits}-bit codes from {enc.image_size}x{enc.image_size} uint8 RGB, model "
              f"fingerprint {enc.fingerprint[:12]} (the run's); encode with --engine onnx")
    if args.torchscript:
        from attnhash.inference.onnx_engine import export_torchscript

        path = export_torchscript(args.run, args.out or Path(args.run) / "model.torchscript.pt")
        print(f"{path}: TorchScript (traced), input uint8 N x 3 x S x S, output z (code bit = z >= 0)")
    return 0
