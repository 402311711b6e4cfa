"""attnhash explain on tiny runs trained in the test: the PNG is written, is an image, and shows the map."""

import os

import numpy as np
import pytest
from PIL import Image

from attnhash.cli import main
from attnhash.commands.explain import explain, output_paths
from attnhash.errors import AttnHashError, DataError
from attnhash.evaluation.explain import map_size_advice, network_maps


def tiny_run(method: str, folder, extra=()):
    from attnhash.config import build_config
    from attnhash.training import train

    overrides = ["model.backbone=resnet18", "model.weights=none", "model.bits=16", "data.image_size=64",
                 "data.train_limit=32", "train.epochs=1", "train.batch_size=16", "model.freeze=layer3", *extra]
    train(build_config(method, overrides=overrides), run_dir=folder, progress=False, log=lambda m: None)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not os.path.isdir(os.environ.get("ATTNHASH_FMNIST_DIR", "/usr/share/datasets/fashion-mnist")):
        pytest.skip("Fashion-MNIST not installed")
    base = tmp_path_factory.mktemp("explain")
    ega = tiny_run("ega", base / "ega", ["method.params.stage1_epochs=1"])
    plain = tiny_run("dpsh", base / "dpsh")
    # real images: a Fashion-MNIST item (28 px grey) and a larger colour picture
    from attnhash.data import load_fashion_mnist

    grey = np.asarray(load_fashion_mnist(os.environ.get("ATTNHASH_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
                      .raw_image(0))
    Image.fromarray(grey).save(base / "boot.png")
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, size=(90, 120, 3), dtype=np.uint8)
    colour[30:60, 40:80] = (250, 20, 20)
    Image.fromarray(colour).save(base / "photo.jpg")
    return ega, plain, base / "boot.png", base / "photo.jpg"


def is_png_picture(path) -> bool:
    with Image.open(path) as im:
        im.load()
        pixels = np.asarray(im.convert("RGB"))
        return im.format == "PNG" and im.width > 200 and im.height > 100 and pixels.std() > 5


def test_explain_writes_pngs_with_the_cam_map_of_an_ega_run(runs):
    ega, _, boot, photo = runs
    written = explain(ega, [str(boot), str(photo)])
    assert written == [ega / "explain" / "boot.png", ega / "explain" / "photo.png"]
    assert all(is_png_picture(p) for p in written)

    from attnhash.inference import Encoder

    encoder = Encoder(ega, device="cpu")
    maps, codes, what = network_maps(encoder, [np.asarray(Image.open(photo))])
    assert what.startswith("attention: CAMAttention")
    assert maps.shape == (1, 2, 2) and maps.min() >= 0 and maps.max() <= 1
    assert codes.shape == (1, 16) and set(np.unique(codes)) <= {-1, 1}
    # the activation map is available for the same run on request
    _, _, what = network_maps(encoder, [np.asarray(Image.open(photo))], source="activation")
    assert what.startswith("activation")


def test_runs_without_attention_get_a_gradcam_map_and_out_names_the_file(runs, tmp_path):
    _, plain, boot, _ = runs
    target = tmp_path / "figure.png"
    warnings = []
    assert explain(plain, [str(boot)], out=str(target), warn=warnings.append) == [target]
    assert is_png_picture(target)
    with pytest.raises(AttnHashError, match="--source gradcam"):
        explain(plain, [str(boot)], source="attention")
    # ResNet18 at stride 32: 64 px give a 2x2 map; the warning names the size that gives 4x4
    assert len(warnings) == 1 and "2x2 at 64 px" in warnings[0] and "--image-size 128" in warnings[0]
    assert "model.output_stride=16" in warnings[0]
    warnings.clear()
    explain(plain, [str(boot)], out=str(target), image_size=128, warn=warnings.append)
    assert warnings == []


def test_gradcam_weights_each_channel_by_its_mean_gradient(runs):
    # With average pooling and a linear hash layer, d<b, z>/dA_c(y, x) = (b W)_c / (h w) at every place, so
    # Grad-CAM is ReLU(sum_c (b W)_c A_c) up to the 1/(h w) factor that the [0, 1] scaling removes.
    import torch

    from attnhash.inference import Encoder

    _, plain, _, photo = runs
    encoder = Encoder(plain, device="cpu")
    image = np.asarray(Image.open(photo))
    maps, codes, what = network_maps(encoder, [image], "gradcam", image_size=128)
    assert what == "Grad-CAM of the image's own code" and maps.shape == (1, 4, 4)
    net = encoder.model
    from attnhash.data import resize_image

    x = torch.from_numpy(np.array(resize_image(image, 128)))
    with torch.no_grad():
        out = net(x.permute(2, 0, 1)[None])
        w = torch.from_numpy(codes.astype(np.float32)) @ net.hash_layer[-1].weight
        cam = torch.relu(torch.einsum("bc,bchw->bhw", w, out["fmap"]))
    cam = (cam - cam.amin()) / (cam.amax() - cam.amin())
    np.testing.assert_allclose(cam[0].numpy(), maps[0], atol=1e-4)
    # the similarity to another item's code is another question, with another map
    other = -codes[0]
    sim, _, what = network_maps(encoder, [image], "gradcam", image_size=128, reference=other)
    assert "reference" in what and not np.allclose(sim, maps)
    with pytest.raises(AttnHashError, match="gradcam"):
        network_maps(encoder, [image], "activation", reference=other)


def test_cli_warns_about_coarse_maps_and_takes_the_new_flags(runs, tmp_path, capsys):
    ega, plain, boot, photo = runs
    assert main(["explain", str(plain), str(boot), "--out", str(tmp_path / "a.png")]) == 0
    err = capsys.readouterr().err
    assert "attnhash explain: warning: the last feature map is 2x2 at 64 px" in err and "--image-size 128" in err
    assert main(["explain", str(plain), str(boot), "--out", str(tmp_path / "b.png"), "--image-size", "128",
                 "--similar-to", str(photo)]) == 0
    assert capsys.readouterr().err == "" and is_png_picture(tmp_path / "b.png")
    assert main(["explain", str(ega), str(boot), "--source", "gradcam", "--out", str(tmp_path / "c.png")]) == 0
    assert main(["explain", str(plain), str(boot), "--image-size", "4"]) == 2
    assert "--image-size must be between 8 and 1024" in capsys.readouterr().err


def test_map_size_advice():
    assert map_size_advice(4, 64, 16) is None
    assert "--image-size 64" in map_size_advice(2, 32, 16) and "output_stride" not in map_size_advice(2, 32, 16)
    assert "--image-size 128" in map_size_advice(1, 32, 32) and "model.output_stride=16" in map_size_advice(1, 32, 32)


def test_cli_prints_the_paths_and_reports_clear_errors(runs, tmp_path, capsys):
    ega, _, boot, photo = runs
    assert main(["explain", str(ega), str(boot), "--out", str(tmp_path / "figs")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "figs" / "boot.png")
    assert main(["explain", str(ega), str(tmp_path / "missing.png")]) == 2
    assert "missing.png: no such image file" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "no-run"), str(boot)]) == 2
    assert "no such run folder" in capsys.readouterr().err
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(DataError, match="cannot read image"):
        explain(ega, [str(not_an_image)])
    with pytest.raises(AttnHashError, match="one PNG"):
        explain(ega, [str(boot), str(photo)], out=str(tmp_path / "one.png"))


def test_images_with_the_same_name_get_distinct_outputs(tmp_path):
    paths = output_paths(tmp_path, ["a/x.png", "b/x.jpg", "c/y.png"], None)
    assert [p.name for p in paths] == ["x.png", "x-1.png", "y.png"]
    assert all(p.parent == tmp_path / "explain" for p in paths)
