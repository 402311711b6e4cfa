import numpy as np
import torch

from attnhash.config import ModelConfig
from attnhash.inference.stagecache import cache_root, prefix_key, stage_outputs
from attnhash.models.network import build_network


def test_cached_rows_equal_direct_computation_and_key_tracks_weights(fmnist):
    torch.manual_seed(0)
    net = build_network(ModelConfig(backbone="resnet18", weights="none", bits=16))
    net.eval()
    idx = np.array([5, 1, 7, 1])
    first = stage_outputs(net, fmnist, idx[:2], 32, 2, torch.device("cpu"), progress=False, log=lambda m: None)
    both = stage_outputs(net, fmnist, idx, 32, 2, torch.device("cpu"), progress=False, log=lambda m: None)
    assert torch.equal(both[:2], first)  # second call reads rows computed by the first
    assert torch.equal(both[1], both[3])
    from attnhash.data import ImageDataset

    images = torch.stack([ImageDataset(fmnist, idx, 32)[i]["image"] for i in range(4)])
    with torch.no_grad():
        x = net.normalize(images)
        for stage in net.backbone.stages()[:2]:
            x = stage(x)
    assert torch.allclose(both, x, atol=1e-5)
    key = prefix_key(net, fmnist, 32, 2)
    assert (cache_root() / key / "features.npy").exists()
    with torch.no_grad():
        net.backbone.conv1.weight.add_(1.0)  # other weights in the frozen prefix -> another cache
    assert prefix_key(net, fmnist, 32, 2) != key
    assert prefix_key(net, fmnist, 32, 3) != key


def test_a_run_trains_the_same_with_a_cold_or_a_warm_cache(fmnist, tmp_path, monkeypatch):
    """Filling the cache must not move the global RNG that training draws from (stochastic depth)."""
    from safetensors.torch import load_file

    from attnhash.config import build_config
    from attnhash.training import train

    monkeypatch.setenv("ATTNHASH_CACHE_DIR", str(tmp_path / "cache"))
    cfg = build_config("dpsh", overrides=["data.image_size=32", "data.train_limit=64", "model.weights=none",
                                          "model.backbone=efficientnet_lite0", "model.freeze=block3",
                                          "model.bits=16", "train.epochs=1", "train.batch_size=32",
                                          "train.frozen_cache=disk"])
    cold = train(cfg, run_dir=tmp_path / "cold", progress=False, log=lambda m: None)
    warm = train(cfg, run_dir=tmp_path / "warm", progress=False, log=lambda m: None)
    a, b = load_file(cold.checkpoint), load_file(warm.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_fill_killed_midway_resumes_and_leftovers_of_old_fills_are_redone(fmnist, tmp_path, monkeypatch):
    """A run killed while it fills the cache (Ctrl-C, OOM) must leave a cache the next run can use: the rows
    flushed before the kill are kept, the rest computed, and the result is what a cold fill gives."""
    from attnhash.inference import stagecache

    torch.manual_seed(0)
    net = build_network(ModelConfig(backbone="resnet18", weights="none", bits=16))
    idx, cpu = np.arange(10), torch.device("cpu")
    monkeypatch.setenv("ATTNHASH_CACHE_DIR", str(tmp_path / "reference"))
    reference = stage_outputs(net, fmnist, idx, 32, 2, cpu, batch_size=2, progress=False, log=lambda m: None)

    monkeypatch.setenv("ATTNHASH_CACHE_DIR", str(tmp_path / "killed"))
    monkeypatch.setattr(stagecache, "CHECKPOINT_BATCHES", 1)
    real, calls = stagecache.run_prefix, []

    def dies_on_the_fourth_batch(*args):
        calls.append(1)
        if len(calls) == 5:  # the first call is the shape probe
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(stagecache, "run_prefix", dies_on_the_fourth_batch)
    try:
        stage_outputs(net, fmnist, idx, 32, 2, cpu, batch_size=2, progress=False, log=lambda m: None)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the fill was meant to be interrupted")
    monkeypatch.setattr(stagecache, "run_prefix", real)
    logged = []
    resumed = stage_outputs(net, fmnist, idx, 32, 2, cpu, batch_size=2, progress=False, log=logged.append)
    assert logged == [logged[0]] and "computed 4 items" in logged[0]  # 3 batches of 2 were kept
    assert torch.equal(resumed, reference)

    # a folder an older version left when killed: meta.json and features.npy but no done.npy
    folder = cache_root() / prefix_key(net, fmnist, 32, 2)
    (folder / "done.npy").unlink()
    logged.clear()
    assert torch.equal(stage_outputs(net, fmnist, idx, 32, 2, cpu, progress=False, log=logged.append), reference)
    assert "computed 10 items" in logged[0]
    # one killed before it wrote meta.json: started again
    (folder / "meta.json").unlink()
    (folder / "done.npy").unlink()
    assert torch.equal(stage_outputs(net, fmnist, idx, 32, 2, cpu, progress=False, log=lambda m: None), reference)



def test_a_cpu_fill_runs_in_chunks_and_stores_what_whole_batches_give(fmnist, tmp_path, monkeypatch):
    from attnhash.inference import device

    torch.manual_seed(0)
    net = build_network(ModelConfig(backbone="resnet18", weights="none", bits=16)).eval()
    idx, cpu = np.arange(10), torch.device("cpu")
    seen = []
    net.backbone.stages()[0].register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    monkeypatch.setenv("ATTNHASH_CACHE_DIR", str(tmp_path / "whole"))
    whole = stage_outputs(net, fmnist, idx, 32, 2, cpu, batch_size=4, progress=False, log=lambda m: None)
    assert seen == [1, 4, 4, 2]  # the probe that sizes the cache, then whole batches
    seen.clear()
    monkeypatch.setattr(device, "CPU_CHUNK_PIXELS", 3 * 32 * 32)
    monkeypatch.setenv("ATTNHASH_CACHE_DIR", str(tmp_path / "chunked"))
    chunked = stage_outputs(net, fmnist, idx, 32, 2, cpu, batch_size=4, progress=False, log=lambda m: None)
    assert seen == [1, 3, 1, 3, 1, 2]
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
