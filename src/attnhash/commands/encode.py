"""attnhash encode: images -> packed binary codes with a trained run."""

from __future__ import annotations

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
    p.set_defaults(func=run)


def run(args) -> int:
    from attnhash.atomic import atomic_write
    from attnhash.data import open_dataset
    from attnhash.encoder import Encoder

    encoder = Encoder(args.run, device=args.device, bits=args.bits)
    image_exts = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
    if Path(args.images).suffix.lower() in image_exts:
        codes = encoder.encode_paths([args.images])
        arrays = {"codes": codes, "paths": np.array([str(Path(args.images).resolve())])}
    else:
        if args.subset != "all":
            from attnhash.rundata import prepare_data

            data = prepare_data(encoder.config.data)
            source, indices = data.source, getattr(data, args.subset)
            labels = data.labels[indices]
        else:
            source = open_dataset(args.images, args.root)
            indices = np.arange(len(source))
            labels = np.asarray(source.labels)
        codes = encoder.encode_source(source, indices)
        arrays = {"codes": codes, "labels": labels, "index": indices,
                  "paths": np.array([source.item_ref(int(i)) for i in indices])}
    arrays.update(bits=np.array(encoder.bits), fingerprint=np.array(encoder.fingerprint))
    out = Path(args.out or Path(args.run) / "encoded.npz")

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(out, write)
    print(f"{len(arrays['codes'])} codes of {encoder.bits} bits ({encoder.bits // 8} bytes each) -> {out}")
    return 0
