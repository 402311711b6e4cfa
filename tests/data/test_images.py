"""The one image decoder: images as a person sees them (EXIF orientation, every Pillow mode), in files and
uploads alike."""

import io

import numpy as np
import pytest
from PIL import Image

from attnhash.data import decode_image_bytes, open_image
from attnhash.data.images import ImageTooLargeError, NotAnImageError
from attnhash.errors import DataError

ORIENTATION = 0x0112


def _sideways_jpeg(upright: Image.Image, path) -> None:
    """The pixels stored turned a quarter left, with EXIF orientation 6 ("turn right to display"): what a
    phone writes when held sideways."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)


def test_exif_orientation_is_applied(photos, tmp_path):
    upright = Image.open(photos[0]).convert("RGB")
    upright.save(tmp_path / "upright.jpg", quality=95)
    _sideways_jpeg(upright, tmp_path / "sideways.jpg")
    shown = open_image(tmp_path / "sideways.jpg")
    assert shown.shape == np.asarray(upright).shape  # width and height the right way round
    diff = np.abs(shown.astype(int) - open_image(tmp_path / "upright.jpg").astype(int)).mean()
    assert diff < 3.0  # the same picture up to JPEG noise
    assert np.array_equal(decode_image_bytes((tmp_path / "sideways.jpg").read_bytes()), shown)  # uploads too


def test_every_pillow_mode_becomes_8bit_rgb_by_its_meaning(tmp_path):
    ramp8 = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (8, 1))  # (8, 64) grey ramp
    ramp16 = ramp8.astype(np.uint16) * 257
    expected_grey = np.repeat(ramp8[..., None], 3, axis=2)
    cases = {
        "L": Image.fromarray(ramp8),
        "I;16": Image.fromarray(ramp16),
        "I": Image.fromarray(ramp16.astype(np.int32)),
        "F": Image.fromarray(ramp8.astype(np.float32) / 255.0),
        "RGB": Image.fromarray(expected_grey),
        "CMYK": Image.fromarray(expected_grey).convert("CMYK"),
        "P": Image.fromarray(expected_grey).convert("P", palette=Image.Palette.ADAPTIVE, colors=256),
    }
    for mode, img in cases.items():
        assert img.mode == mode
        got = open_image(_png_or_tiff(img, tmp_path / f"{mode.replace(';', '')}"))
        assert got.dtype == np.uint8 and got.shape == (8, 64, 3), mode
        assert np.abs(got.astype(int) - expected_grey).max() <= 2, mode
    # 1-bit: black and white
    bw = open_image(_png_or_tiff(Image.fromarray(ramp8 >= 128), tmp_path / "bw"))
    assert set(np.unique(bw)) == {0, 255}
    # transparency is shown over white, as viewers show it
    for mode, img in (("RGBA", Image.new("RGBA", (4, 4), (200, 0, 0, 0))), ("LA", Image.new("LA", (4, 4), (0, 0)))):
        assert open_image(_png_or_tiff(img, tmp_path / mode))[0, 0].tolist() == [255, 255, 255], mode
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert abs(int(open_image(_png_or_tiff(half, tmp_path / "half"))[0, 0, 0]) - 127) <= 1
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30] * 256)
    palette.info["transparency"] = 0
    assert open_image(_png_or_tiff(palette, tmp_path / "ptrans"))[0, 0].tolist() == [255, 255, 255]


def _png_or_tiff(img: Image.Image, stem) -> str:
    """Saved in a format that keeps the mode (TIFF for float and 32-bit integer images)."""
    path = f"{stem}.{'tif' if img.mode in ('F', 'I', 'CMYK') else 'png'}"
    img.save(path)
    return path


def test_sixteen_bit_png_is_not_white(tmp_path):
    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    np.testing.assert_array_equal(open_image(tmp_path / "g16.png")[..., 0], grey8)


def test_unreadable_images_give_one_line_naming_the_file(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    good = io.BytesIO()
    Image.new("RGB", (40, 30)).save(good, format="PNG")
    (tmp_path / "cut.png").write_bytes(good.getvalue()[:60])
    (tmp_path / "dir.jpg").mkdir()
    for name in ("junk.jpg", "cut.png", "dir.jpg", "missing.png"):
        with pytest.raises(DataError) as info:
            open_image(tmp_path / name)
        assert str(info.value).startswith(str(tmp_path / name) + ": ") and "\n" not in str(info.value)
    with pytest.raises(NotAnImageError, match="upload: not an image in PNG"):
        decode_image_bytes(b"hello", "upload", formats=("PNG",))
    with pytest.raises(ImageTooLargeError, match="40x30 pixels, more than 1,000"):
        decode_image_bytes(good.getvalue(), "big", max_pixels=1000)
