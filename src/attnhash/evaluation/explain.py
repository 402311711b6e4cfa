"""Where a run's network looks: the spatial maps `attnhash explain` and the HTML report draw over images.

Three kinds of map, each (B, h, w) on the last feature map and scaled to [0, 1] per image:

- attention: the attention module's own `last_map` of the forward (EGA's CAM map, SimAM's mean weights,
  the position attention each location receives in DHIDA's dual attention);
- gradcam: Grad-CAM (Selvaraju et al., ICCV 2017) for a code instead of a class. The target is a scalar of
  the hash layer's output z: by default the image's own code score <sign(z), z> (which locations make the
  network assert the code it gives), or, with a reference code b (the code of a chosen database item),
  the relaxed similarity <b, z> (what makes this image retrieve that item). Each channel c of the feature
  map A is weighted by the spatial mean of dT/dA_c, and the map is ReLU(sum_c w_c A_c). It works for any
  deep run, attention module or not;
- activation: the channel mean of |A|, as the papers' activation figures.

A map is only informative when the last feature map has room for a "where": at the benchmarks' 32 px and
output stride 16 it is 2x2, at the default stride 32 it is 1x1 (flat by construction). `map_size_advice`
names the input size that gives at least 4x4.
"""

from __future__ import annotations

import math

import numpy as np

from attnhash.errors import AttnHashError

MIN_MAP_SIDE = 4
SOURCES = ("auto", "attention", "gradcam", "activation")


def output_stride(encoder) -> int:
    """The backbone's total downsampling (32, or 16/8 with model.output_stride)."""
    return int(getattr(encoder.model.backbone, "output_stride", 32) or 32)


def map_size_advice(map_side: int, image_size: int, stride: int) -> str | None:
    """A warning when a map of side `map_side` (from `image_size` px at output stride `stride`) is smaller than
    4x4, naming the input size (and the output stride) that give one; None when it is large enough."""
    if map_side >= MIN_MAP_SIDE:
        return None
    need = MIN_MAP_SIDE * stride
    advice = f"--image-size {need}"
    if stride > 16:
        advice += (" (the network then sees a larger image than it was trained on), or train with "
                   f"model.output_stride=16, which gives {MIN_MAP_SIDE}x{MIN_MAP_SIDE} at {MIN_MAP_SIDE * 16} px")
    else:
        advice += " (the network then sees a larger image than it was trained on)"
    return (f"the last feature map is {map_side}x{map_side} at {image_size} px (output stride {stride}): too coarse "
            f"to show where the network looks (a {map_side}x{map_side} map is nearly flat); for a "
            f"{MIN_MAP_SIDE}x{MIN_MAP_SIDE} map use {advice}")


def _normalise(maps):
    lo = maps.amin(dim=(1, 2), keepdim=True)
    hi = maps.amax(dim=(1, 2), keepdim=True)
    return (maps - lo) / (hi - lo).clamp_min(1e-12)


def network_maps(encoder, images: list[np.ndarray], source: str = "auto", image_size: int | None = None,
                 reference: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(maps (B, h, w) in [0, 1], codes (B, K) in {-1, +1}, a description of the map) for a batch of images.

    source: attention | gradcam | activation | auto (the attention module's map when the run has a module
    after the backbone, else Grad-CAM). image_size: the input side (default: the run's). reference: a code in
    {-1, +1}^K that Grad-CAM explains the similarity to (default: each image's own code).
    """
    import torch

    from attnhash.codes import sign
    from attnhash.models import HashingNetwork

    if source not in SOURCES:
        raise AttnHashError(f"unknown map source {source!r} (one of {', '.join(SOURCES)})")
    network = encoder.model
    if not isinstance(network, HashingNetwork):
        raise AttnHashError(f"{encoder.run_dir}: a {encoder.config.method.name} run has no network to explain "
                            "(shallow methods work on fixed features)")
    attention = network.attention
    has_map = attention is not None and hasattr(attention, "last_map")
    if source == "attention" and not has_map:
        where = "inside the backbone's blocks" if encoder.config.model.attention else "in this run"
        raise AttnHashError(f"{encoder.run_dir}: no attention module after the backbone ({where}); "
                            "use --source gradcam or --source activation")
    if source == "auto":
        source = "attention" if has_map else "gradcam"
    if reference is not None and source != "gradcam":
        raise AttnHashError("a reference code (--similar-to) explains a similarity, which only Grad-CAM maps do "
                            "(--source gradcam)")
    batch = _resized_batch(encoder, images, image_size).to(encoder.device)
    network.eval()
    if source == "gradcam":
        maps, z = _gradcam(network, batch, reference)
        what = "Grad-CAM of " + ("the similarity to the reference code" if reference is not None
                                 else "the image's own code")
    else:
        with torch.no_grad():
            out = network(batch)
        z = out["z"]
        if source == "attention":
            maps = attention.last_map.float()
            what = f"attention: {type(attention).__name__}"
        else:
            maps = out["fmap"].float().abs().mean(dim=1)
            what = "activation: mean |feature map|"
    codes = sign(z.detach()).to(torch.int8)
    return _normalise(maps.detach()).cpu().numpy(), codes.cpu().numpy(), what


def _resized_batch(encoder, images, image_size):
    import torch

    from attnhash.data import resize_image, to_rgb_array

    size = image_size or encoder.image_size
    arrays = [resize_image(to_rgb_array(img, f"image {i}"), size) for i, img in enumerate(images)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def _gradcam(network, batch, reference):
    """Grad-CAM maps (B, h, w) and z (B, K) for the target <b, z> (b = the own code or the reference)."""
    import torch

    from attnhash.codes import sign

    with torch.enable_grad():
        images = batch.float().requires_grad_(True)  # so the graph reaches the map even with frozen stages
        out = network(images)
        fmap, z = out["fmap"], out["z"]
        target = sign(z.detach()) if reference is None else torch.tensor(
            np.broadcast_to(reference, z.shape), dtype=z.dtype, device=z.device)
        score = (target * z).sum()
        grads = torch.autograd.grad(score, fmap)[0]
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * fmap.detach()).sum(dim=1))
    return cam.float(), z.detach()


def reference_code(encoder, image: np.ndarray, image_size: int | None = None) -> np.ndarray:
    """The {-1, +1} code of a reference image (the database item a Grad-CAM similarity map is about)."""
    import torch

    from attnhash.codes import sign

    batch = _resized_batch(encoder, [image], image_size).to(encoder.device)
    encoder.model.eval()
    with torch.no_grad():
        z = encoder.model(batch)["z"]
    return sign(z)[0].to(torch.int8).cpu().numpy()


def upsample(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a (h, w) map to (height, width); the network squashes images to a square, so the
    map's cells stretch back over the original aspect ratio."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()


DISPLAY_MIN = 256  # small images (Fashion-MNIST's 28 px) are drawn enlarged to at least this many pixels


def enlarged(image: np.ndarray, minimum: int = DISPLAY_MIN) -> np.ndarray:
    """The image scaled up by a whole factor (nearest) until its longer side reaches `minimum`."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = max(1, math.ceil(minimum / max(h, w)))
    if scale == 1:
        return image
    return np.asarray(Image.fromarray(image).resize((w * scale, h * scale), Image.Resampling.NEAREST))


def overlay_figure(image: np.ndarray, amap: np.ndarray, title: str, subtitle: str, alpha: float = 0.5):
    """Original | map overlaid (jet), as a matplotlib Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = enlarged(image)
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
    return fig
