"""attnhash encode: images -> packed binary codes with a trained run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def register(sub) -> None:
    p = sub.add_parser("encode", help="encode images to packed binary codes (.npz)")
    p.add_argument("run", help="run folder (or its model.safetensors)")
    p.add_argument("--images", required=True,
                   help="a list file, an image folder, a dataset name (fmnist, ...) or a single image file")
    p.add_argument("--root", help="root folder for the paths of a list file / the dataset")
    p.add_argument("--subset", choices=["all", "query", "train", "database"], default="all",
                   help="with a dataset name: which part of the run's protocol split to encode")
    p.add_argument("--out", help="output .npz (default: <run>/encoded.npz)")
    p.add_argument("--bits", type=int, help="refuse the checkpoint unless it makes codes of this length")
    p.add_argument("--device", default="auto")
    p.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                   help="torch: the run's checkpoint; onnx: its exported RUN/model.onnx (or an .onnx file as RUN), "
                        "run by onnxruntime (see `attnhash export`)")
    p.add_argument("--shard", metavar="I/N",
                   help="encode only the I-th of N contiguous shares of the images (independent processes, each with "
                        "its own --out; `index build --codes` merges the files in order). Under torchrun each "
                        "process takes its rank's share and writes <out>.part<rank>-of-<world>.npz")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first unreadable image (default: skip it, list it in <out>.skipped.tsv)")
    p.set_defaults(func=run)


def run(args) -> int:
    from attnhash.codefile import CodeSet
    from attnhash.data import IMAGE_EXTENSIONS, Skipped, open_dataset, prepare_data, report_path
    from attnhash.inference.distributed import Distributed
    from attnhash.inference.encode import encode_code_set, parse_shard, shard_of
    from attnhash.inference.onnx_engine import load_encoder
    from attnhash.runs import RunFolder

    encoder = load_encoder(args.run, args.engine, args.device, bits=args.bits)
    out = Path(args.out) if args.out else RunFolder(encoder.run_dir).encoded_path
    if Path(args.images).suffix.lower() in IMAGE_EXTENSIONS and not Path(args.images).is_dir():
        # one image asked for by name: it is read or the command fails with its one-line error
        codes = CodeSet(encoder.encode_paths([args.images]), encoder.bits, encoder.fingerprint,
                        paths=[str(Path(args.images).resolve())])
        codes.save(out)
        print(f"1 code of {encoder.bits} bits ({codes.codes.shape[1]} bytes) -> {out}")
        return 0
    if args.subset != "all":
        data = prepare_data(encoder.config.data)
        source, indices = data.source, getattr(data, args.subset)
    else:
        source = open_dataset(args.images, args.root)
        indices = np.arange(len(source))
    dist = Distributed.from_env()
    if args.shard or dist.active:  # this process's share: independent processes (--shard) or torchrun ranks
        i, n = parse_shard(args.shard) if args.shard else (dist.rank, dist.world_size)
        indices = shard_of(indices, i, n)
        if not args.shard:
            out = out.with_name(f"{out.stem}.part{i}-of-{n}{out.suffix}")
    skipped = None if args.strict else Skipped()
    codes = encode_code_set(encoder, source, indices, skipped)
    codes.save(out)
    if skipped:
        print(skipped.summary(skipped.write(report_path(out))), file=sys.stderr)
    print(f"{len(codes)} codes of {encoder.bits} bits ({codes.codes.shape[1]} bytes each) -> {out}")
    return 0

