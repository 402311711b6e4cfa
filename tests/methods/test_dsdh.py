"""DSDH: the ridge W step, the discrete (DCC) B step, and the alternation with the network."""

import pytest
import torch

from attnhash.codes import sign
from attnhash.losses.pairwise import MemoryBank
from attnhash.methods.base import TrainContext, create_method
from attnhash.methods.dsdh import b_objective, b_step, w_step

SMALL = dict(bits=32, image_size=32, model={"freeze": "layer3"}, optim={"lr": 1e-4})


def test_w_step_is_the_ridge_solution():
    g = torch.Generator().manual_seed(0)
    b = sign(torch.randn(8, 40, generator=g))
    y = torch.eye(4)[torch.randint(0, 4, (40,), generator=g)].t()  # C x N one-hot
    mu, nu = 2.0, 0.5
    w = w_step(b, y, mu, nu)
    # the gradient of mu ||Y - W^T B||^2 + nu ||W||^2 vanishes ...
    grad = 2 * mu * b @ (b.t() @ w - y.t()) + 2 * nu * w
    assert grad.abs().max() < 1e-4
    # ... and it is the least-squares solution of the system augmented with sqrt(nu/mu) I
    a = torch.cat([b.t(), (nu / mu) ** 0.5 * torch.eye(8)])
    rhs = torch.cat([y.t(), torch.zeros(8, 4)])
    assert torch.allclose(w, torch.linalg.lstsq(a, rhs).solution, atol=1e-5)


def test_b_step_hand_checked_the_label_can_overrule_the_sign_of_u():
    # K = 2 bits, C = 1 class, one item with y = 1; W reads bit 0 only.
    w = torch.tensor([[1.0], [0.0]])
    y = torch.tensor([[1.0]])
    u = torch.tensor([[-0.01], [0.5]])
    # F(b) = (1 - b_0)^2 + ||b - u||^2: b_0 = +1 costs 1.0201, b_0 = -1 costs 4 + 0.9801
    b, _ = b_step(sign(u), u, y, w, mu=1.0, eta=1.0, iters=10)
    assert b.flatten().tolist() == [1.0, 1.0]
    assert b_objective(b, u, y, w, 1.0, 1.0).item() == pytest.approx(1.0201 + 0.25, rel=1e-5)
    # eta = 55 (the paper's): F(+1) - F(-1) = -4 + 220 |u_0|, the label only overrules |u_0| < 1/55
    b, _ = b_step(sign(u), u, y, w, mu=1.0, eta=55.0, iters=10)
    assert b.flatten().tolist() == [1.0, 1.0]
    u = torch.tensor([[-0.05], [0.5]])
    b, _ = b_step(sign(u), u, y, w, mu=1.0, eta=55.0, iters=10)
    assert b.flatten().tolist() == [-1.0, 1.0]


def test_b_step_lowers_its_objective_and_ends_coordinate_wise_optimal():
    g = torch.Generator().manual_seed(1)
    k, n, c, mu, eta = 6, 50, 3, 1.0, 0.5
    u = torch.randn(k, n, generator=g) * 0.3
    y = torch.eye(c)[torch.randint(0, c, (n,), generator=g)].t()
    w = torch.randn(k, c, generator=g)
    b0 = sign(u)
    values = [b_objective(b0, u, y, w, mu, eta).item()]
    b = b0
    for _ in range(4):  # one sweep at a time: the objective never rises
        b, _ = b_step(b, u, y, w, mu, eta, iters=1)
        values.append(b_objective(b, u, y, w, mu, eta).item())
    assert all(later <= earlier + 1e-4 for earlier, later in zip(values, values[1:]))
    assert values[-1] < values[0]
    b, sweeps = b_step(b, u, y, w, mu, eta, iters=50)
    assert sweeps < 50  # converged: a sweep changed nothing
    best = b_objective(b, u, y, w, mu, eta).item()
    for i in range(k):  # no single bit flip (of any item) lowers the objective
        for j in range(n):
            flipped = b.clone()
            flipped[i, j] *= -1
            assert b_objective(flipped, u, y, w, mu, eta).item() >= best - 1e-4


def test_update_every_redoes_the_b_and_w_steps_during_an_epoch():
    g = torch.Generator().manual_seed(2)
    labels = torch.eye(3)[torch.randint(0, 3, (20,), generator=g)]
    method = create_method("dsdh", {"update_every": 2}, bits=8, num_classes=3, num_train=20)
    method.bank = MemoryBank(20, 8, labels)
    method.bank.update(torch.arange(20), torch.randn(20, 8, generator=g))
    method.B = sign(method.bank.codes.t()).contiguous()
    ctx = TrainContext(network=None, forward=None, optimizer=None, train_labels=labels, num_train=20, epochs=1,
                       device=torch.device("cpu"), log=lambda m: None)
    batch = {"label": labels[:4], "index": torch.arange(4)}
    ctx.step = 1
    method.loss({"z": torch.randn(4, 8, generator=g)}, batch, ctx)
    assert torch.count_nonzero(method.W) == 0  # not a multiple of update_every: W untouched
    ctx.step = 2
    method.loss({"z": torch.randn(4, 8, generator=g)}, batch, ctx)
    assert torch.allclose(method.W, w_step(method.B, labels.t(), 1.0, 0.1), atol=1e-5)


def test_training_alternates_with_the_b_and_w_steps(fmnist, quick_train):
    losses, method, _ = quick_train("dsdh", fmnist, steps=12, epochs=2, **SMALL)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    y = method.bank.labels.t()
    assert set(method.B.unique().tolist()) <= {-1.0, 1.0} and method.B.shape == (32, 72)
    assert torch.allclose(method.W, w_step(method.B, y, method.params.mu, method.params.nu), atol=1e-5)
    assert method.bank.filled.all()  # set-up filled every item's output before the first B step
