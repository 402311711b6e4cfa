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
    p.add_argument("--strict", action="store_true",
                   help="stop at the first unreadable image (default: skip it, list it in <out>.skipped.tsv)")
    p.set_defaults(func=run)


def run(args) -> int:
    from attnhash.codefile import CodeSet
    from attnhash.data import IMAGE_EXTENSIONS, Skipped, open_dataset, prepare_data, report_path
    from attnhash.inference import Encoder

    encoder = Encoder(args.run, device=args.device, bits=args.bits)
    skipped = None if args.strict else Skipped()
    if Path(args.images).suffix.lower() in IMAGE_EXTENSIONS and not Path(args.images).is_dir():
        # one image asked for by name: it is read or the command fails with its one-line error
        codes = CodeSet(encoder.encode_paths([args.images]), encoder.bits, encoder.fingerprint,
                        paths=[str(Path(args.images).resolve())])
    else:
        if args.subset != "all":
            data = prepare_data(encoder.config.data)
            source, indices = data.source, getattr(data, args.subset)
            labels = data.labels[indices]
        else:
            source = open_dataset(args.images, args.root)
            indices = np.arange(len(source))
            labels = np.asarray(source.labels)
        packed = encoder.encode_source(source, indices, skipped=skipped)
        if skipped:
            keep = np.isin(indices, np.fromiter(skipped.indices(), dtype=np.int64), invert=True)
            indices, labels = indices[keep], labels[keep]
        codes = CodeSet(packed, encoder.bits, encoder.fingerprint,
                        paths=[source.item_ref(int(i)) for i in indices], labels=labels, index=indices)
    out = Path(args.out) if args.out else encoder.run.encoded_path
    codes.save(out)
    if skipped:
        print(skipped.summary(skipped.write(report_path(out))), file=sys.stderr)
    print(f"{len(codes)} codes of {encoder.bits} bits ({codes.codes.shape[1]} bytes each) -> {out}")
    return 0
