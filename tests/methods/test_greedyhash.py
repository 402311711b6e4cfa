"""GreedyHash (supervised): straight-through sign, the | |h| - 1 |^3 penalty, a classifier on the codes."""

import math

import pytest
import torch

from attnhash.losses.classification import is_single_label
from attnhash.losses.straight_through import straight_through_sign
from attnhash.methods.base import create_method
from attnhash.methods.greedyhash import greedy_penalty

SMALL = dict(bits=32, image_size=32, model={"freeze": "layer3"}, optim={"lr": 1e-4})


def test_straight_through_sign_forward_is_the_code_and_backward_is_the_identity():
    h = torch.tensor([[-2.0, -1e-8, 0.0, 0.3, 5.0]], requires_grad=True)
    b = straight_through_sign(h)
    assert b.tolist() == [[-1.0, -1.0, 1.0, 1.0, 1.0]]  # sign(0) = +1, attnhash's code convention
    upstream = torch.tensor([[0.7, -3.0, 2.5, 0.0, -0.1]])
    b.backward(upstream)
    assert torch.equal(h.grad, upstream)  # exactly the identity, whatever |h| is
    # the clipped form passes it only where |h| <= clip
    h.grad = None
    straight_through_sign(h, clip=1.0).backward(upstream)
    assert torch.equal(h.grad, upstream * torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]]))
    # torch.sign itself passes no gradient at all
    h2 = h.detach().clone().requires_grad_(True)
    torch.sign(h2).backward(upstream)
    assert torch.count_nonzero(h2.grad) == 0


def test_penalty_hand_checked():
    h = torch.tensor([[0.0, 0.5, 1.0, -2.0]])
    # | |h| - 1 |^3 = 1, 0.125, 0, 1
    assert greedy_penalty(h, 3.0).item() == pytest.approx(2.125 / 4)
    assert greedy_penalty(torch.tensor([[1.0, -1.0]]), 3.0).item() == 0.0


def test_loss_hand_checked():
    method = create_method("greedyhash", {"alpha": 0.1}, bits=2, num_classes=2, num_train=4)
    with torch.no_grad():
        method.code_classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    z = torch.tensor([[0.5, -0.2]])  # codes b = (+1, -1): logits (1, -2)
    label = torch.tensor([[1.0, 0.0]])
    loss, parts = method.loss({"z": z}, {"label": label}, None)
    ce = -math.log(math.exp(1) / (math.exp(1) + math.exp(-2)))
    penalty = (0.5**3 + 0.8**3) / 2
    assert parts["classification"] == pytest.approx(ce, rel=1e-6)
    assert loss.item() == pytest.approx(ce + 0.1 * penalty, rel=1e-6)


def test_multi_label_data_switch_to_per_class_bce():
    assert is_single_label(torch.eye(3))
    assert not is_single_label(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    method = create_method("greedyhash", {"classification": "sigmoid"}, bits=2, num_classes=2, num_train=4)
    with torch.no_grad():
        method.code_classifier.weight.zero_()
    loss, _ = method.loss({"z": torch.ones(1, 2)}, {"label": torch.tensor([[1.0, 1.0]])}, None)
    assert loss.item() == pytest.approx(math.log(2) + 0.0, rel=1e-6)  # logits 0: BCE = log 2, |h| = 1


def test_training_lowers_the_loss_and_trains_the_code_classifier(fmnist, quick_train):
    torch.manual_seed(0)
    initial = create_method("greedyhash", {}, bits=32, num_classes=10, num_train=72).code_classifier.weight.clone()
    losses, method, network = quick_train("greedyhash", fmnist, steps=12, **SMALL)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    own = {id(p) for p in method.code_classifier.parameters()}
    grouped = {id(p) for g in method.trainable_parameters(network) for p in g["params"]}
    assert own <= grouped
    # the classifier is drawn on a forked RNG, so the same seed gives the same start, and training moved it
    assert not torch.equal(method.code_classifier.weight, initial)
    assert "code_classifier.weight" not in network.state_dict()  # not part of the saved encoder
