"""attnhash explain: where a run's network looks, as the papers' feature-activation figures.

For each image: the network of the run is applied, and its attention module's `last_map` (the spatial map of
the last forward: EGA's CAM map, SimAM's mean weights, ...) is upsampled to the image and drawn over it with
a jet colour map, beside the original. Runs without an attention module after the backbone (plain methods,
or attention placed inside the backbone's blocks) get the activation map instead: the channel mean of
|feature map| of the last stage, as in the papers' activation figures. `--source` forces either.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from attnhash.errors import AttnHashError

DISPLAY_MIN = 256  # small images (Fashion-MNIST's 28 px) are drawn enlarged to at least this many pixels


def register(sub) -> None:
    p = sub.add_parser("explain", help="draw a run's attention (or activation) map over images, as PNG files")
    p.add_argument("run", help="run folder")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s)")
    p.add_argument("--out", help="PNG file (one image) or folder (default: RUN/explain/<image name>.png)")
    p.add_argument("--source", choices=("auto", "attention", "activation"), default="auto",
                   help="attention: the attention module's map; activation: mean |feature map|; "
                        "auto: attention when the run has a module after the backbone (default)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the map over the image (default 0.5)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def network_maps(encoder, images: list[np.ndarray], source: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """(maps (B, h, w) in [0, 1], codes (B, K) in {-1, +1}, a description of the map) for a batch of images."""
    import torch

    from attnhash.codes import sign
    from attnhash.models import HashingNetwork

    network = encoder.model
    if not isinstance(network, HashingNetwork):
        raise AttnHashError(f"{encoder.run_dir}: a {encoder.config.method.name} run has no network to explain "
                            "(shallow methods work on fixed features)")
    attention = network.attention
    has_map = attention is not None and hasattr(attention, "last_map")
    if source == "attention" and not has_map:
        where = "inside the backbone's blocks" if encoder.config.model.attention else "in this run"
        raise AttnHashError(f"{encoder.run_dir}: no attention module after the backbone ({where}); "
                            "use --source activation")
    use_attention = has_map and source != "activation"
    batch = encoder._batch(images).to(encoder.device)
    network.eval()
    with torch.no_grad():
        out = network(batch)
    if use_attention:
        maps = attention.last_map.float()
        what = f"attention: {type(attention).__name__}"
    else:
        maps = out["fmap"].float().abs().mean(dim=1)
        what = "activation: mean |feature map|"
    lo = maps.amin(dim=(1, 2), keepdim=True)
    hi = maps.amax(dim=(1, 2), keepdim=True)
    maps = (maps - lo) / (hi - lo).clamp_min(1e-12)
    codes = sign(out["z"]).to(torch.int8)
    return maps.cpu().numpy(), codes.cpu().numpy(), what


def upsample(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a (h, w) map to (height, width); the network squashes images to a square, so the
    map's cells stretch back over the original aspect ratio."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()


def draw(image: np.ndarray, amap: np.ndarray, path: Path, title: str, subtitle: str, alpha: float) -> Path:
    """Original | map overlaid (jet), written as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    h, w = image.shape[:2]
    scale = max(1, math.ceil(DISPLAY_MIN / max(h, w)))
    if scale > 1:
        image = np.asarray(Image.fromarray(image).resize((w * scale, h * scale), Image.Resampling.NEAREST))
    heat = upsample(amap, image.shape[0], image.shape[1])
    fig = Figure(figsize=(8, 4.4))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    left.imshow(image)
    left.set_title("image", fontsize=9)
    right.imshow(image)
    shown = right.imshow(heat, cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
    right.set_title(subtitle, fontsize=9)
    for ax in (left, right):
        ax.axis("off")
    fig.colorbar(shown, ax=right, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


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
            alpha: float = 0.5, device: str = "cpu", batch_size: int = 32) -> list[Path]:
    """Write one PNG per image (the original beside its map); returns their paths."""
    from attnhash.data import open_image
    from attnhash.inference import Encoder

    if not 0.0 <= alpha <= 1.0:
        raise AttnHashError(f"--alpha must be between 0 and 1, got {alpha}")
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise AttnHashError(f"{run_dir}: no such run folder")
    arrays = [open_image(p) for p in images]  # every image is checked before any work
    targets = output_paths(run_dir, images, out)
    encoder = Encoder(run_dir, device=device)
    cfg = encoder.config
    ablated = f" (no {', '.join(cfg.method.ablate)})" if cfg.method.ablate else ""
    written = []
    for s in range(0, len(arrays), batch_size):
        chunk = arrays[s:s + batch_size]
        maps, codes, what = network_maps(encoder, chunk, source)
        for i, (image, amap, code) in enumerate(zip(chunk, maps, codes)):
            bits = np.packbits(code > 0)
            title = (f"{Path(images[s + i]).name}  |  {cfg.method.name}{ablated} {encoder.bits} bits, "
                     f"{cfg.model.backbone}  |  code {bits.tobytes().hex()}")
            flat = ", flat: the same everywhere" if float(amap.max() - amap.min()) == 0.0 else ""
            subtitle = f"{what} ({amap.shape[0]}x{amap.shape[1]}{flat})"
            written.append(draw(image, amap, targets[s + i], title, subtitle, alpha))
    return written


def run(args) -> int:
    for path in explain(args.run, args.images, out=args.out, source=args.source, alpha=args.alpha,
                        device=args.device):
        print(path)
    return 0
