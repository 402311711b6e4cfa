"""UHGA: Unsupervised Hashing with Gradient Attention (Jiang, Wang, Cheng, Du, Li, Symmetry 12:1193, 2020;
seed 001), with the gradient attention of Huang, Chen, Pan, "Accelerate Learning of Deep Hashing with
Gradient Attention", ICCV 2019.

Unsupervised: labels are never read (the trainer leaves them out of the batches; they serve evaluation only).

Similarity (seed 001 eq. 2-3 = SSDH's construction): pooled features of the network's own pretrained
backbone at setup (the paper: AlexNet fc7) -> cosine distances of all training pairs -> S in {-1, 0, +1}
with SSDH's two half-Gaussian thresholds (alpha = beta = 2). See attnhash.methods.similarity.

Loss on the relaxed codes h = tanh(z) (every term a mean):
    L = L_sim + lambda * (L_quant + L_balance)
    L_sim     = pairwise likelihood on the known pairs (s_ij = (S_ij + 1)/2, theta = <h_i, h_j>/2) [default],
                or SSDH's squared loss (<h_i, h_j>/K - S_ij)^2 with `loss=squared`. Seed 001's comparison
                table has "SSDH" and "Ours" as different rows on the same S, so "Ours" is not SSDH's squared
                loss: the likelihood is the default, `loss=squared` gives the "SSDH+GA" row.
    L_quant   = ||h - sign(h)||^2, L_balance = sum over bits of (mean over the batch of h)^2 / K
    lambda    = `reg_weight`. The seed's hyperparameter table sweeps one weight over 0, 0.1, ..., 0.9; at 0
                the 16-bit codes collapse to chance (0.1015 mAP on CIFAR-10) and large values degrade every
                length, the signature of the quantisation/balance trade-off against the similarity term
                (without a balance term codes can collapse; with too much, similarity is drowned). The best
                values are 0.2-0.4 (CIFAR-10 average over lengths 0.333 at 0.2 and 0.3, NUS-WIDE 0.700 at
                0.2): default 0.3 (choice), one step away from the 16-bit cliff at 0.1.

Gradient attention (seed 001 Algorithm 1 and eqs. 16-18, after Huang et al.), one training step:
  1. forward the batch, h = tanh(z); the gradients of the two parts w.r.t. the codes,
     g_sim = dL_sim/dh and g_reg = d(lambda (L_quant + L_balance))/dh, are taken separately.
  2. A small MLP (shared by all bits and items; 3 -> hidden -> hidden -> 2, tanh) reads, per bit, the code
     value h_ik and the two gradients (divided by the RMS of their sum over the batch, so its input is
     scale-free) and outputs two weights w = 2 sigmoid(.) in (0, 2), one per gradient (eqs. 16-17):
     g~ = w_sim * g_sim + w_reg * g_reg. Its last layer starts at zero, so every weight starts at 1 and
     UHGA starts as plain gradient descent.
  3. The network is updated with the rescaled gradient (eq. 18): h.backward(g~), optimizer step.
  4. The attention MLP is trained by the loss measured after that update (one-step look-ahead), with its
     own Adam optimiser (`attention_lr`), never by the main loss. The exact look-ahead through the network
     parameters would need a Hessian-vector product through the whole network per step; the first-order
     form used here moves the codes instead: z' = z - eta * (g~ * (1 - h^2)) / rms((g_sim + g_reg)(1 - h^2)),
     h' = tanh(z'), and minimises L(h') over the MLP's parameters (z, h and the gradients are constants).
     (1 - h^2) is tanh's derivative, so z' is the step the rescaled gradient asks of the hash layer output;
     dividing by the RMS of the plain step makes eta (`lookahead_step`) a size in z units independent of
     the loss scale. eta = 1 (choice): a step of one unit of z is the scale at which tanh codes flip, so
     the look-ahead sees the dilemma of seed 001 sec. 2.2 (in "batch" pairs both codes of a pair move and
     can jump past each other). Weights are not renormalised, so they can speed a step up (w > 1; Huang et
     al.'s aim is faster learning) as well as damp it. Observed on Fashion-MNIST: with a small eta (0.5)
     the weights grow (acceleration), with a large one (2) the similarity weights shrink below 1; the
     spread across bits and items is what changes the direction of the update (with Adam a uniform scale
     does not matter).

Ablation `gradient_attention`: plain gradients (g = g_sim + g_reg, i.e. ordinary backpropagation of L), the
seed's "Ours" row against "Ours+GA".

Pairs (`pairs`, choice): "batch" (default; Huang et al. and SSDH train on the pairs within a mini-batch) or
"bank" (the batch against a memory bank of every training item's code; in the look-ahead the bank stays put).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnhash.errors import ConfigError
from attnhash.losses.quantization import quantization_loss
from attnhash.losses.similarity import SimilarityPairs, build_similarity, similarity_likelihood, ssdh_squared_loss
from attnhash.methods.base import Method, TrainContext, register_method


@dataclass
class UHGAParams:
    alpha: float = 2.0  # SSDH threshold: similar if d < peak - alpha * left std
    beta: float = 2.0  # dissimilar if d > peak + beta * right std
    bins: int = 100
    loss: str = "likelihood"  # likelihood | squared (SSDH's)
    scale: float = 0.5  # theta_ij = scale * <h_i, h_j> in the likelihood
    reg_weight: float = 0.3  # lambda on quantisation + balance: the hyperparameter seed 001 sweeps over 0..0.9
    pairs: str = "batch"  # batch | bank
    attention_hidden: int = 32  # width of the gradient attention MLP
    attention_lr: float = 1e-3  # its own Adam learning rate
    lookahead_step: float = 1.0  # eta of the look-ahead code step, in units of the RMS plain step of z


def balance_loss(h: Tensor) -> Tensor:
    """Bit balance: mean over bits of (mean over the batch of h_k)^2 (0 when every bit is +1 half the time)."""
    return h.mean(dim=0).pow(2).mean()


def _rms(x: Tensor) -> Tensor:
    return x.pow(2).mean().sqrt().clamp_min(1e-12)


class GradientAttention(nn.Module):
    """Per-bit weights for the two code gradients (Huang et al. 2019; seed 001 sec. 2.3).

    Input per (item, bit): the code value and the similarity and regulariser gradients (already scale-free).
    Output: (w_sim, w_reg), each in (0, 2), equal to 1 at initialisation.
    """

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2)
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, h: Tensor, g_sim: Tensor, g_reg: Tensor) -> tuple[Tensor, Tensor]:
        w = 2.0 * torch.sigmoid(self.net(torch.stack([h, g_sim, g_reg], dim=-1)))
        return w[..., 0], w[..., 1]


@register_method
class UHGA(Method):
    name = "uhga"
    paper = "Jiang, Wang, Cheng, Du, Li. Unsupervised Hashing with Gradient Attention. Symmetry 2020"
    summary = "unsupervised: SSDH similarity, likelihood + quantisation/balance, look-ahead gradient attention"
    supervised = False
    Params = UHGAParams
    ablations = {"gradient_attention": "plain gradients instead of the attention-weighted ones (the 'Ours' row)"}

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params or UHGAParams(), bits, num_classes, num_train, ablate)
        p = self.params
        if p.loss not in ("likelihood", "squared"):
            raise ConfigError(f"uhga: loss must be 'likelihood' or 'squared', got {p.loss!r}")
        if p.reg_weight < 0 or p.lookahead_step <= 0 or p.attention_hidden < 1:
            raise ConfigError("uhga: reg_weight >= 0, lookahead_step > 0 and attention_hidden >= 1 are required")
        self.grad_attention = None
        if "gradient_attention" not in self.ablate:
            # Draw its initial weights without advancing the global RNG, so that a run and its ablation
            # with the same seed start from the same network.
            with torch.random.fork_rng(devices=[]):
                self.grad_attention = GradientAttention(p.attention_hidden)
        self.attention_optimizer: torch.optim.Optimizer | None = None
        self.pairs: SimilarityPairs | None = None

    # ----- set-up ---------------------------------------------------------------------------------------
    def trainable_parameters(self, network):
        """The network's groups only: the attention MLP has its own optimiser (trained by the look-ahead)."""
        ga = {id(p) for p in self.grad_attention.parameters()} if self.grad_attention is not None else set()
        groups = super().trainable_parameters(network)
        for g in groups:
            g["params"] = [p for p in g["params"] if id(p) not in ga]
        return groups

    def setup(self, ctx: TrainContext) -> None:
        p = self.params
        s = build_similarity(*ctx.collect_outputs("features"), p.alpha, p.beta, p.bins, ctx.log,
                             backbone_weights=ctx.network.backbone.weights_source)
        self.pairs = SimilarityPairs(s, self.bits, p.pairs, ctx.gather())
        if self.grad_attention is not None:
            self.attention_optimizer = torch.optim.Adam(self.grad_attention.parameters(), lr=p.attention_lr)

    @property
    def uses_attention(self) -> bool:
        return self.grad_attention is not None and "gradient_attention" not in self.ablate

    # ----- loss -----------------------------------------------------------------------------------------
    def _parts(self, h: Tensor, other: Tensor, s: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(L_sim, L_quant, L_balance) of codes h against `other` on the pairs (s, mask)."""
        if self.params.loss == "likelihood":
            sim = similarity_likelihood(h, other, s, mask, scale=self.params.scale)
        else:
            sim = ssdh_squared_loss(h, other, s, mask)
        return sim, quantization_loss(h), balance_loss(h)

    def loss(self, out, batch, ctx):
        """L of a batch (plain backpropagation of it is the `gradient_attention` ablation)."""
        h = torch.tanh(out["z"])
        other, s, mask = self.pairs.targets(batch["index"], h)
        sim, quant, bal = self._parts(h, other, s, mask)
        loss = sim + self.params.reg_weight * (quant + bal)
        return loss, {"similarity": float(sim.detach()), "quantization": float(quant.detach()),
                      "balance": float(bal.detach())}

    # ----- the gradient attention step (seed 001, Algorithm 1) -----------------------------------------
    def training_step(self, batch, ctx):
        if not self.uses_attention:
            return super().training_step(batch, ctx)
        lam = self.params.reg_weight
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.amp):
            out = ctx.forward(batch)
        z = out["z"].float()
        h = torch.tanh(z)
        code = h.detach().requires_grad_(True)
        other, s, mask = self.pairs.targets(batch["index"], code)
        batch_pairs = other is code  # both codes of a pair move (within-batch pairs)
        sim, quant, bal = self._parts(code, other, s, mask)
        reg = lam * (quant + bal)
        g_sim = torch.autograd.grad(sim, code)[0]
        g_reg = torch.autograd.grad(reg, code)[0] if lam > 0 else torch.zeros_like(code)
        code = code.detach()

        # eqs. 16-17: per-bit weights of the two gradients
        norm = _rms(g_sim + g_reg)
        w_sim, w_reg = self.grad_attention(code, g_sim / norm, g_reg / norm)
        g_att = w_sim * g_sim + w_reg * g_reg

        # eq. 18: the network follows the rescaled gradient
        ctx.optimizer.zero_grad(set_to_none=True)
        h.backward(g_att.detach())
        ctx.optimizer_step()

        # look-ahead: the loss after the update, through the codes, trains the attention MLP
        slope = 1.0 - code.pow(2)
        step = g_att * slope / _rms((g_sim + g_reg) * slope)
        h_new = torch.tanh(z.detach() - self.params.lookahead_step * step)
        sim_new, quant_new, bal_new = self._parts(h_new, h_new if batch_pairs else other, s, mask)
        after = sim_new + lam * (quant_new + bal_new)
        self.attention_optimizer.zero_grad(set_to_none=True)
        after.backward()
        ctx.dist.average_gradients(self.grad_attention.parameters())  # one attention MLP for all processes
        self.attention_optimizer.step()

        loss = sim.detach() + reg.detach()
        return {
            "loss": float(loss),
            "similarity": float(sim.detach()),
            "quantization": float(quant.detach()),
            "balance": float(bal.detach()),
            "lookahead": float(after.detach()),
            "w_sim": float(w_sim.detach().mean()),
            "w_reg": float(w_reg.detach().mean()),
        }
