"""DSDH: Li, Sun, He, Tan, "Deep Supervised Discrete Hashing", NeurIPS 2017.

The codes should both keep the pairwise label similarities and be good features for a linear classifier.
With U the network outputs of the training set (K x N), B in {-1, +1}^{K x N} their discrete codes, Y the
C x N labels and W (K x C) the classifier, the paper minimises (sums over all items and pairs)

    J = sum_ij [log(1 + e^theta_ij) - s_ij theta_ij]                theta_ij = u_i^T u_j / 2
        + mu ||Y - W^T B||_F^2 + nu ||W||_F^2 + eta ||B - U||_F^2

by alternating three steps:
  - network step (B, W fixed): gradient descent on the pairwise likelihood of U + eta ||B - U||^2. Each
    batch is compared with a memory bank of the whole training set's outputs (as DPSH);
  - W step (B fixed): the ridge regression W = (B B^T + nu/mu I)^{-1} B Y^T;
  - B step (W, U fixed): min_B mu ||Y - W^T B||^2 + eta ||B - U||^2 over binary B, by discrete cyclic
    coordinate descent as in SDH (Shen et al. CVPR 2015): with P = mu W Y + eta U, row k of B (bit k of
    every item) has the closed form  b_k = sign(p_k - mu w_k^T W'^T B'),  W', B' = W, B without row k
    (each row update is the exact minimiser given the others, so the objective never increases).
Hyperparameters mu = 1, nu = 0.1, eta = 55 (the authors' released code for CIFAR-10).

Schedule (choice: the authors' code redoes W and B for each batch on that batch alone; the paper's
alternation is over the whole training set): at set-up one pass fills the bank with every item's output;
at the start of every epoch W step, B step (`dcc_iters` sweeps, warm-started from the current B, stopped
when no bit changes), W step, on the bank's current U; `update_every` > 0 also repeats it every so many
steps.

Scale of the network step: attnhash averages loss terms, the likelihood over the batch x N pairs and the
quantisation over the batch x K entries. The weight that keeps the paper's ratio of the two gradients
(its pair sum counts every pair in both directions) is eta_mean = eta * K / (2 N): 0.26 for 48 bits and
5,000 training items. `net_eta` overrides it. B and W are buffers of this method, not saved with the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnhash.codes import sign
from attnhash.errors import ConfigError
from attnhash.losses.pairwise import MemoryBank, pairwise_likelihood
from attnhash.methods.base import Method, TrainContext, register_method


@dataclass
class DSDHParams:
    mu: float = 1.0  # weight of the linear classification of the codes, ||Y - W^T B||^2
    nu: float = 0.1  # ridge weight on W
    eta: float = 55.0  # weight of ||B - U||^2 (paper scale: sums)
    dcc_iters: int = 10  # at most this many sweeps over the bits per B step
    update_every: int = 0  # also redo the W/B steps every this many optimisation steps (0: once per epoch)
    scale: float = 0.5  # theta_ij = scale * <u_i, u_j>
    net_eta: float | None = None  # weight of the mean ||B - U||^2 in the network step; None: eta K / (2 N)


def w_step(b: Tensor, y: Tensor, mu: float, nu: float) -> Tensor:
    """The ridge solution W = (B B^T + nu/mu I)^{-1} B Y^T (K x C) of mu ||Y - W^T B||^2 + nu ||W||^2."""
    k = b.shape[0]
    gram = b @ b.t() + (nu / mu) * torch.eye(k, dtype=b.dtype, device=b.device)
    return torch.linalg.solve(gram, b @ y.t())


def b_objective(b: Tensor, u: Tensor, y: Tensor, w: Tensor, mu: float, eta: float) -> Tensor:
    """mu ||Y - W^T B||^2 + eta ||B - U||^2, the part of DSDH's objective that depends on B."""
    return mu * (y - w.t() @ b).pow(2).sum() + eta * (b - u).pow(2).sum()


def b_step(b: Tensor, u: Tensor, y: Tensor, w: Tensor, mu: float, eta: float, iters: int) -> tuple[Tensor, int]:
    """Discrete cyclic coordinate descent on B (K x N), one bit (row) at a time; returns (B, sweeps done).

    Row k minimises mu ||W^T B||^2 - 2 tr(B^T P) with P = mu W Y + eta U given the other rows:
    b_k = sign(p_k - mu sum_{l != k} (W W^T)_kl b_l)  (||b_k||^2 = N is constant).
    """
    b = b.clone()
    p = mu * (w @ y) + eta * u
    ww = w @ w.t()  # K x K
    sweeps = 0
    for _ in range(iters):
        sweeps += 1
        changed = False
        for k in range(b.shape[0]):
            others = ww[k] @ b - ww[k, k] * b[k]  # sum over l != k of (W W^T)_kl b_l
            new = sign(p[k] - mu * others)
            changed |= bool((new != b[k]).any())
            b[k] = new
        if not changed:
            break
    return b, sweeps


@register_method
class DSDH(Method):
    name = "dsdh"
    paper = "Li, Sun, He, Tan. Deep Supervised Discrete Hashing. NeurIPS 2017"
    summary = "pairwise likelihood on a memory bank + linear classification of discrete codes, alternating B/W steps"
    supervised = True
    Params = DSDHParams

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params or DSDHParams(), bits, num_classes, num_train, ablate)
        p = self.params
        if p.mu <= 0 or p.nu <= 0 or p.eta < 0 or p.dcc_iters < 1 or p.update_every < 0:
            raise ConfigError("dsdh: mu > 0, nu > 0, eta >= 0, dcc_iters >= 1 and update_every >= 0 are required")
        self.register_buffer("B", torch.zeros(bits, num_train), persistent=False)  # K x N discrete codes
        self.register_buffer("W", torch.zeros(bits, num_classes), persistent=False)  # K x C classifier
        self.bank: MemoryBank | None = None

    @property
    def net_eta(self) -> float:
        p = self.params
        return p.net_eta if p.net_eta is not None else p.eta * self.bits / (2.0 * self.num_train)

    def setup(self, ctx: TrainContext) -> None:
        self.bank = ctx.memory_bank(self.bits)
        u, filled = ctx.collect_outputs("z")
        self.bank.update(torch.nonzero(filled).flatten(), u[filled])
        self.B = sign(self.bank.codes.t()).contiguous()
        ctx.log(f"dsdh: network-step weight of ||B - U||^2 = {self.net_eta:.4g}")

    def update_codes(self, ctx: TrainContext) -> dict[str, float]:
        """W step, B step, W step on the bank's current U (the paper's alternation over the training set)."""
        p = self.params
        u = self.bank.codes.t()  # K x N
        y = self.bank.labels.t().float()  # C x N
        self.W = w_step(self.B, y, p.mu, p.nu)
        before = float(b_objective(self.B, u, y, self.W, p.mu, p.eta))
        self.B, sweeps = b_step(self.B, u, y, self.W, p.mu, p.eta, p.dcc_iters)
        self.W = w_step(self.B, y, p.mu, p.nu)
        n = u.shape[1]
        stats = {
            "b_objective_before": before / n,
            "b_objective": float(b_objective(self.B, u, y, self.W, p.mu, p.eta)) / n,
            "classification": float((y - self.W.t() @ self.B).pow(2).sum()) / n,
            "sign_agreement": float((self.B == sign(u)).float().mean()),
            "sweeps": sweeps,
        }
        ctx.log("dsdh: B/W step " + " ".join(f"{k}={v:.4g}" for k, v in stats.items()))
        return stats

    def on_epoch_start(self, ctx: TrainContext) -> None:
        self.update_codes(ctx)

    def loss(self, out, batch, ctx):
        p = self.params
        if p.update_every and ctx.step > 0 and ctx.step % p.update_every == 0:
            self.update_codes(ctx)
        u = out["z"]
        index = batch["index"]
        self.bank.update(index, u)
        bank_codes, s, mask = self.bank.pairs(batch["label"])
        likelihood = pairwise_likelihood(u, bank_codes, s, scale=p.scale, mask=mask)
        quant = (u - self.B[:, index].t()).pow(2).mean()
        loss = likelihood + self.net_eta * quant
        return loss, {"likelihood": float(likelihood.detach()), "quantization": float(quant.detach())}
