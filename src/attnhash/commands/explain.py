"""attnhash explain: where a run's network looks, as the papers' feature-activation figures.

For each image the run's network is applied and a map of its last feature map (see
attnhash.evaluation.explain: the attention module's own map, Grad-CAM of the code or of the similarity to a
reference image, or the mean activation) is upsampled to the image and drawn over it with a jet colour map,
beside the original. A map smaller than 4x4 earns a warning that names the input size giving a usable one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from attnhash.errors import AttnHashError


def register(sub) -> None:
    p = sub.add_parser("explain", help="draw where a run's network looks (attention or Grad-CAM map) over images")
    p.add_argument("run", help="run folder")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s)")
    p.add_argument("--out", help="PNG file (one image) or folder (default: RUN/explain/<image name>.png)")
    p.add_argument("--source", choices=("auto", "attention", "gradcam", "activation"), default="auto",
                   help="attention: the attention module's map; gradcam: Grad-CAM of the code (any run); "
                        "activation: mean |feature map|; auto: attention when the run has a module after the "
                        "backbone, else gradcam (default)")
    p.add_argument("--similar-to", metavar="IMAGE",
                   help="Grad-CAM of the similarity to this image's code (a database item) instead of the own code")
    p.add_argument("--image-size", type=int,
                   help="input side in pixels (default: the run's); larger inputs give larger maps")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the map over the image (default 0.5)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def output_paths(run_dir: Path, images: list[str], out: str | None) -> list[Path]:
    """Where each image's PNG goes: --out FILE.png for one image, a folder otherwise, RUN/explain by default."""
    if out is not None and out.lower().endswith(".png"):
        if len(images) != 1:
            raise AttnHashError(f"--out {out} names one PNG file but {len(images)} images were given; give a folder")
        return [Path(out)]
    folder = Path(out) if out is not None else run_dir / "explain"
    paths, used = [], set()
    for image in images:
        stem, k = Path(image).stem, 1
        name = stem
        while name in used:  # two inputs with the same name from different folders
            name, k = f"{stem}-{k}", k + 1
        used.add(name)
        paths.append(folder / f"{name}.png")
    return paths


def explain(run_dir: str | Path, images: list[str], out: str | None = None, source: str = "auto",
            alpha: float = 0.5, device: str = "cpu", batch_size: int = 32, image_size: int | None = None,
            similar_to: str | None = None, warn=None) -> list[Path]:
    """Write one PNG per image (the original beside its map); returns their paths. `warn` (default: stderr)
    receives the warning about a map smaller than 4x4."""
    from attnhash.data import open_image
    from attnhash.evaluation.explain import map_size_advice, network_maps, output_stride, overlay_figure, reference_code
    from attnhash.evaluation.plots import save
    from attnhash.inference import Encoder

    warn = warn or (lambda m: print(f"attnhash explain: warning: {m}", file=sys.stderr))
    if not 0.0 <= alpha <= 1.0:
        raise AttnHashError(f"--alpha must be between 0 and 1, got {alpha}")
    if image_size is not None and not 8 <= image_size <= 1024:
        raise AttnHashError(f"--image-size must be between 8 and 1024 pixels, got {image_size}")
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise AttnHashError(f"{run_dir}: no such run folder")
    arrays = [open_image(p) for p in images]  # every image is checked before any work
    reference_image = open_image(similar_to) if similar_to else None
    targets = output_paths(run_dir, images, out)
    encoder = Encoder(run_dir, device=device)
    reference = None if reference_image is None else reference_code(encoder, reference_image, image_size)
    if reference is not None and source == "auto":
        source = "gradcam"
    cfg = encoder.config
    size = image_size or encoder.image_size
    ablated = f" (no {', '.join(cfg.method.ablate)})" if cfg.method.ablate else ""
    resized = f", shown at {size} px (trained at {encoder.image_size})" if size != encoder.image_size else ""
    written, warned = [], False
    for s in range(0, len(arrays), batch_size):
        chunk = arrays[s:s + batch_size]
        maps, codes, what = network_maps(encoder, chunk, source, image_size, reference)
        if not warned:
            advice = map_size_advice(min(maps.shape[1:]), size, output_stride(encoder))
            if advice:
                warn(advice)
            warned = True
        if reference is not None:
            what += f" ({Path(similar_to).name})"
        for i, (image, amap, code) in enumerate(zip(chunk, maps, codes)):
            bits = np.packbits(code > 0)
            title = (f"{Path(images[s + i]).name}  |  {cfg.method.name}{ablated} {encoder.bits} bits, "
                     f"{cfg.model.backbone}{resized}  |  code {bits.tobytes().hex()}")
            flat = ", flat: the same everywhere" if float(amap.max() - amap.min()) == 0.0 else ""
            subtitle = f"{what} ({amap.shape[0]}x{amap.shape[1]}{flat})"
            written.append(save(overlay_figure(image, amap, title, subtitle, alpha), targets[s + i], dpi=100))
    return written


def run(args) -> int:
    for path in explain(args.run, args.images, out=args.out, source=args.source, alpha=args.alpha,
                        device=args.device, image_size=args.image_size, similar_to=args.similar_to):
        print(path)
    return 0
