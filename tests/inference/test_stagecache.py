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
