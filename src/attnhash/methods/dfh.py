"""DFH: Push for Quantization: Deep Fisher Hashing (Li, Pei, Zha, van Gemert, BMVC 2019; arXiv 1909.00206).

Idea: separate the classes in the *binary* space. A margin on the pairwise likelihood pushes similar pairs'
inner products above +m and dissimilar ones' below -m (pushing codes away from 0, hence "push for
quantisation"), and, after Fisher's LDA, every class gets a binary centre c_k: images are pulled to their
class centre (small within-class spread) while the centres are pushed apart (large between-class spread).

Variables: the network's relaxed codes u = z (no activation, as the authors' code), binary codes B and
binary class centres C (num_classes x K). Alternating optimisation:

- network step (every batch), against the relaxed codes of the whole training set (a memory bank, as the
  authors' code; `pairs: batch` for batch pairs), theta_ij = <u_i, u_j> / 2:
      L = mean_ij [ s_ij log(1 + e^{m - theta_ij}) + (1 - s_ij) log(1 + e^{theta_ij + m}) ]
          + eta * mean || b_i - u_i ||^2
- B-step (closed form, every batch): b_i = sign(u_i + mu C^T y_i), the binary code nearest to both the
  network's output and the item's class centre;
- C-step (the Fisher part): relax C to V and run gradient descent on
      mean || V^T y_i - b_i ||^2                        (within class: centres near their items' codes)
      + nu  * mean (V V^T - K (2I - 1 1^T))^2             (between classes: <c_k, c_k> = K, <c_k, c_l> = -K)
      + nta * mean (V - sign V)^2                         (binary centres)
  for 200 steps (lr 0.03, x0.1 at steps 150 and 180, the authors' schedule), then C = sign(V).

When to run the C-step (`center_update`): "epoch" (default, a choice) runs it at the start of every epoch
from the second on, on the whole training set's bank codes and B; "batch" runs it on every batch's B as the
authors' code does (200 small steps per batch). In the first epoch C = 0, so b = sign(u).

Choices where the paper and code leave a gap: margin m = 1 (the authors' public script runs with margin 0
on COCO; ports use 1 or 3); multi-label y is normalised to sum 1 so that C^T y is the mean of the item's
class centres (the authors' code has this normalisation commented out; single-label data is unaffected).
Hyperparameters mu = 1, nu = 1, nta = 1, eta = 0.5 are the authors' code's. Every term is a mean, as in
that code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attnhash.codes import sign
from attnhash.errors import ConfigError
from attnhash.losses.pairwise import MemoryBank, Partners, label_similarity, masked_mean
from attnhash.methods.base import Method, TrainContext, register_method


@dataclass
class DFHParams:
    margin: float = 1.0  # m in the pairwise likelihood
    eta: float = 0.5  # weight of || b - u ||^2 in the network loss
    mu: float = 1.0  # pull of the class centre in the B-step, b = sign(u + mu C^T y)
    nu: float = 1.0  # weight of the between-class term in the C-step
    nta: float = 1.0  # weight of the centres' quantisation term in the C-step
    center_steps: int = 200  # gradient steps per C-step
    center_lr: float = 0.03  # their step size (x0.1 at 75% and 90% of the steps)
    center_update: str = "epoch"  # epoch | batch
    pairs: str = "bank"  # bank (authors' code) | batch


def margin_likelihood(u: Tensor, others: Tensor, s: Tensor, margin: float, mask: Tensor) -> Tensor:
    """Mean over pairs of s log(1 + e^{m - theta}) + (1 - s) log(1 + e^{theta + m}), theta = <u_i, o_j>/2."""
    theta = 0.5 * (u @ others.t())
    per_pair = s * F.softplus(margin - theta) + (1.0 - s) * F.softplus(theta + margin)
    return masked_mean(per_pair, mask)


def normalized_labels(labels: Tensor) -> Tensor:
    """Multi-hot rows scaled to sum 1 (rows without labels stay 0)."""
    return labels / labels.sum(dim=1, keepdim=True).clamp_min(1.0)


def b_step(u: Tensor, labels: Tensor, centers: Tensor, mu: float) -> Tensor:
    """b_i = sign(u_i + mu C^T y_i): the binary codes (B-step), with attnhash's sign(0) = +1."""
    return sign(u.detach() + mu * normalized_labels(labels) @ centers)


def center_objective(v: Tensor, y: Tensor, b: Tensor, nu: float, nta: float) -> Tensor:
    """Within-class + nu * between-class + nta * quantisation objective of the relaxed centres V (C x K)."""
    n_classes, k = v.shape
    target = k * (2.0 * torch.eye(n_classes, device=v.device) - 1.0)
    within = (y @ v - b).pow(2).mean()
    between = (v @ v.t() - target).pow(2).mean()
    quant = (v - torch.sign(v).detach()).pow(2).mean()
    return within + nu * between + nta * quant


def c_step(v: Tensor, labels: Tensor, b: Tensor, p: DFHParams) -> Tensor:
    """Gradient descent on the relaxed centres from `v` (warm start); returns the new V."""
    y = normalized_labels(labels).float()
    v = v.detach().clone()
    lr = p.center_lr
    with torch.enable_grad():
        v.requires_grad_(True)
        for i in range(p.center_steps):
            if i in (int(0.75 * p.center_steps), int(0.9 * p.center_steps)):
                lr *= 0.1
            loss = center_objective(v, y, b, p.nu, p.nta)
            (grad,) = torch.autograd.grad(loss, v)
            with torch.no_grad():
                v -= lr * grad
    return v.detach()


@register_method
class DFH(Method):
    name = "dfh"
    paper = "Li, Pei, Zha, van Gemert. Push for Quantization: Deep Fisher Hashing. BMVC 2019"
    summary = ("margin pairwise likelihood + binary class centres (Fisher-style within/between terms), "
               "b = sign(u + C^T y)")
    supervised = True
    Params = DFHParams
    ablations = {"centers": "no class centres (b = sign(u), no C-step)"}

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params if params is not None else DFHParams(), bits, num_classes, num_train, ablate)
        if self.params.center_update not in ("epoch", "batch"):
            raise ConfigError(f"dfh: center_update must be epoch or batch, got {self.params.center_update!r}")
        self.partners = Partners(self.params.pairs)
        self.codes: MemoryBank | None = None  # latest relaxed code of every training item (set up in setup)
        # relaxed and binary class centres; C = 0 until the first C-step (then b = sign(u))
        self.register_buffer("v", torch.zeros(num_classes, bits))
        self.register_buffer("centers", torch.zeros(num_classes, bits))

    def distributed_refusal(self) -> str | None:
        if self.params.center_update == "batch" and "centers" not in self.ablate:
            return ("center_update=batch moves the class centres with each process's own batch, so the processes "
                    "would drift apart; use center_update=epoch (the default) under torchrun")
        return None

    def setup(self, ctx: TrainContext) -> None:
        self.partners = Partners(self.params.pairs, ctx.num_train, self.bits, ctx.train_labels, ctx.gather())
        # the per-epoch C-step needs every training item's latest code: the pair bank, or one of its own
        bank = self.partners.bank
        self.codes = bank if bank is not None else ctx.memory_bank(self.bits)
        self.v = self.v.to(ctx.device)
        self.centers = self.centers.to(ctx.device)

    def _update_centers(self, labels: Tensor, b: Tensor) -> None:
        self.v = c_step(self.v, labels, b, self.params)
        self.centers = sign(self.v)

    def on_epoch_start(self, ctx: TrainContext) -> None:
        bank = self.codes
        if "centers" in self.ablate or self.params.center_update != "epoch" or ctx.epoch == 0 or bank is None:
            return
        # the whole training set's codes seen so far: B-step for all of them, then the C-step
        filled = bank.filled
        if not bool(filled.any()):
            return
        labels = bank.labels[filled]
        b = b_step(bank.codes[filled], labels, self.centers, self.params.mu)
        self._update_centers(labels, b)

    def loss(self, out, batch, ctx):
        u = out["z"]
        labels = batch["label"]
        p = self.params
        use_centers = "centers" not in self.ablate
        b = b_step(u, labels, self.centers, p.mu) if use_centers else sign(u.detach())
        if use_centers and p.center_update == "batch":
            self._update_centers(labels, b)  # the authors' order: C-step on this batch's b, loss with that b
        index = batch.get("index")
        others, other_labels, mask = self.partners(u, labels, index)
        if self.codes is not None and self.codes is not self.partners.bank and index is not None:
            self.codes.update(index, u)
        s = label_similarity(labels, other_labels)
        pair = margin_likelihood(u, others, s, p.margin, mask)
        quant = (b - u).pow(2).mean()
        loss = pair + p.eta * quant
        return loss, {"likelihood": float(pair.detach()), "quantization": float(quant.detach())}
