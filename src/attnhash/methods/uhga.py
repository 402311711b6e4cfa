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

Gradient attention (seed 001 sec. 2.2-2.3 and Algorithm 1, after Huang et al.), `attention` param:

"pair" (default: Huang et al.'s mechanism). Seed 001's "dilemma": with in-batch pairs both codes of a
pair receive the pair's gradient at once, so a similar pair whose bit disagrees moves both codes toward
each other and they can jump past each other (still disagreeing), which makes codes fluctuate. The
attention decides, per pair and bit, WHICH code of the pair moves. One training step:
  1. forward the batch, h = tanh(z). L_sim depends on the codes only through the inner products
     Q_ij = <h_i, h_j>, so its gradient splits exactly into per-pair parts: with C = dL_sim/dQ and
     c_ij = C_ij + C_ji, pair {i, j} sends G_ij = c_ij h_j to h_i and G_ji = c_ij h_i to h_j (for the
     likelihood c_ij = 2 (sigma(theta_ij) - s_ij) / 2 / #pairs, Huang et al.'s (sigma(theta) - s) h_j / 2),
     and dL_sim/dh_i = sum_j G_ij. O(B^2 K) over the known pairs of the batch.
  2. A small MLP (shared by every pair and bit; 6 -> hidden -> hidden -> 1, tanh) scores each side of a
     pair from (own code value h_ik, own pairwise gradient G_ijk, own batch gradient g_ik, and the same
     three of the partner), g = dL/dh the whole batch's gradient (similarity + regulariser); pairwise
     and batch gradients are each divided by their RMS over the batch, so the inputs are scale-free. A
     softmax over the two codes of the pair gives a_ijk + a_jik = 1.
  3. The network is updated with g~_i = sum_j 2 a_ijk G_ijk + (the item's own term c_ii h_i) + g_reg_i
     (eq. 18): h.backward(g~), optimizer step. The MLP's last layer starts at zero, so a = 1/2 and g~ = g:
     UHGA starts as plain gradient descent; a -> 1 makes code i take the pair's whole step (doubled) and
     leaves j in place.
  4. Look-ahead (Algorithm 1: "calculate the loss after update; update the attention network"): the MLP
     is trained on L(h') + `attention_penalty` * mean (a - 1/2)^2 over the known pairs and bits, never on
     the main loss; the penalty pulls a toward 1/2 (Huang et al.'s guard against always moving the same
     code). The exact look-ahead through the network's parameters would need a Hessian-vector product
     through the whole network per step; the first-order form moves the codes instead:
     z' = z - eta * (g~ * (1 - h^2)) / rms(g * (1 - h^2)), h' = tanh(z') (z, h and the gradients are
     constants): (1 - h^2) is tanh's derivative, so z' is the step the rescaled gradient asks of the hash
     layer's output, and dividing by the RMS of the plain step makes eta (`lookahead_step`) a size in z
     units whatever the loss scale. eta = 1 (choice): one unit of z is the scale at which tanh codes flip,
     so the look-ahead sees the jump-past of the dilemma. The attention MLP has its own Adam optimiser
     (`attention_lr`). Needs `pairs: batch` (with a bank only the batch's code of a pair can move).

"item" (the earlier variant, kept for comparison): per (item, bit) an MLP (3 -> hidden -> hidden -> 2)
reads (h_ik, g_sim_ik, g_reg_ik) and outputs two independent weights w = 2 sigmoid(.) in (0, 2) for the
similarity and the regulariser gradients, g~ = w_sim g_sim + w_reg g_reg, with the same look-ahead and no
penalty. It reweights the two loss parts per bit; it does not choose between the codes of a pair.

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
from attnhash.losses.similarity import (
    SimilarityPairs,
    build_similarity,
    similarity_likelihood,
    similarity_likelihood_of_inner,
    ssdh_squared_loss,
    ssdh_squared_of_inner,
)
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
    attention: str = "pair"  # pair: Huang et al.'s softmax over the two codes of a pair | item: per-item weights
    attention_hidden: int = 32  # width of the gradient attention MLP
    attention_lr: float = 1e-3  # its own Adam learning rate
    attention_penalty: float = 0.1  # weight of mean (a - 1/2)^2 in the look-ahead loss ("pair" only; choice)
    lookahead_step: float = 1.0  # eta of the look-ahead code step, in units of the RMS plain step of z


def balance_loss(h: Tensor) -> Tensor:
    """Bit balance: mean over bits of (mean over the batch of h_k)^2 (0 when every bit is +1 half the time)."""
    return h.mean(dim=0).pow(2).mean()


def _rms(x: Tensor) -> Tensor:
    return x.pow(2).mean().sqrt().clamp_min(1e-12)


class ItemGradientAttention(nn.Module):
    """The "item" variant: per-bit weights for the two code gradients of an item.

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


class PairGradientAttention(nn.Module):
    """Huang et al.'s gradient attention: per pair and bit, a softmax over the two codes of the pair.

    `own` and `partner` are (P, K, 3) stacks of (code value, pairwise gradient, batch gradient), scale-free,
    for the first and second code of P pairs. Returns a (P, K), the share of the pair's step taken by the
    first code (the second takes 1 - a); 1/2 at initialisation. Swapping the two sides gives 1 - a.
    """

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )
        nn.init.zeros_(self.score[-1].weight)
        nn.init.zeros_(self.score[-1].bias)

    def forward(self, own: Tensor, partner: Tensor) -> Tensor:
        first = self.score(torch.cat([own, partner], dim=-1)).squeeze(-1)
        second = self.score(torch.cat([partner, own], dim=-1)).squeeze(-1)
        return torch.sigmoid(first - second)  # softmax over the pair's two scores


@register_method
class UHGA(Method):
    name = "uhga"
    paper = "Jiang, Wang, Cheng, Du, Li. Unsupervised Hashing with Gradient Attention. Symmetry 2020"
    summary = ("unsupervised: SSDH similarity, likelihood + quantisation/balance, look-ahead gradient attention "
               "(per pair: which code of a pair moves)")
    supervised = False
    Params = UHGAParams
    ablations = {"gradient_attention": "plain gradients instead of the attention-weighted ones (the 'Ours' row)"}

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params or UHGAParams(), bits, num_classes, num_train, ablate)
        p = self.params
        if p.loss not in ("likelihood", "squared"):
            raise ConfigError(f"uhga: loss must be 'likelihood' or 'squared', got {p.loss!r}")
        if p.reg_weight < 0 or p.lookahead_step <= 0 or p.attention_hidden < 1 or p.attention_penalty < 0:
            raise ConfigError("uhga: reg_weight >= 0, lookahead_step > 0, attention_hidden >= 1 and "
                              "attention_penalty >= 0 are required")
        if p.attention not in ("pair", "item"):
            raise ConfigError(f"uhga: attention must be 'pair' (Huang et al.'s) or 'item', got {p.attention!r}")
        if p.attention == "pair" and p.pairs != "batch" and "gradient_attention" not in self.ablate:
            raise ConfigError("uhga: the per-pair gradient attention decides which code of a pair moves, but with "
                              "pairs=bank only the batch's code moves; use pairs=batch or attention=item")
        self.grad_attention = None
        if "gradient_attention" not in self.ablate:
            # Draw its initial weights without advancing the global RNG, so that a run and its ablation
            # with the same seed start from the same network.
            with torch.random.fork_rng(devices=[]):
                kind = PairGradientAttention if p.attention == "pair" else ItemGradientAttention
                self.grad_attention = kind(p.attention_hidden)
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

    def _similarity_of_inner(self, inner: Tensor, s: Tensor, mask: Tensor) -> Tensor:
        """L_sim as a function of the inner products of the codes (the same value as in `_parts`)."""
        if self.params.loss == "likelihood":
            return similarity_likelihood_of_inner(inner, s, mask, scale=self.params.scale)
        return ssdh_squared_of_inner(inner, s, mask, self.bits)

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
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.amp):
            out = ctx.forward(batch)
        z = out["z"].float()
        h = torch.tanh(z)
        code = h.detach()
        other, s, mask = self.pairs.targets(batch["index"], code)
        if self.params.attention == "pair":
            g_att, g_plain, parts, attention_loss, shown = self._pair_attention(code, s, mask)
        else:
            g_att, g_plain, parts, attention_loss, shown = self._item_attention(code, other, s, mask)

        # eq. 18: the network follows the attended gradient
        ctx.optimizer.zero_grad(set_to_none=True)
        h.backward(g_att.detach())
        ctx.optimizer_step()

        # look-ahead: the loss after the update, through the codes, trains the attention MLP
        slope = 1.0 - code.pow(2)
        step = g_att * slope / _rms(g_plain * slope)
        h_new = torch.tanh(z.detach() - self.params.lookahead_step * step)
        sim_new, quant_new, bal_new = self._parts(h_new, h_new if other is code else other, s, mask)
        after = sim_new + self.params.reg_weight * (quant_new + bal_new)
        self.attention_optimizer.zero_grad(set_to_none=True)
        (after + attention_loss).backward()
        ctx.dist.average_gradients(self.grad_attention.parameters())  # one attention MLP for all processes
        self.attention_optimizer.step()

        sim, quant, bal = parts
        return {"loss": float(sim + self.params.reg_weight * (quant + bal)), "similarity": float(sim),
                "quantization": float(quant), "balance": float(bal), "lookahead": float(after.detach()), **shown}

    def _regulariser_gradient(self, code: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(L_quant, L_balance, d(lambda (L_quant + L_balance))/dh) of detached codes."""
        code = code.detach().requires_grad_(True)
        quant, bal = quantization_loss(code), balance_loss(code)
        lam = self.params.reg_weight
        grad = torch.autograd.grad(lam * (quant + bal), code)[0] if lam > 0 else torch.zeros_like(code)
        return quant.detach(), bal.detach(), grad

    def _item_attention(self, code, other, s, mask):
        """The "item" variant: two weights per (item, bit), one per loss part (eqs. 16-17 as first read)."""
        leaf = code.detach().requires_grad_(True)
        partner = leaf if other is code else other
        sim = self._parts(leaf, partner, s, mask)[0]
        g_sim = torch.autograd.grad(sim, leaf)[0]
        quant, bal, g_reg = self._regulariser_gradient(code)
        norm = _rms(g_sim + g_reg)
        w_sim, w_reg = self.grad_attention(code, g_sim / norm, g_reg / norm)
        g_att = w_sim * g_sim + w_reg * g_reg
        shown = {"w_sim": float(w_sim.detach().mean()), "w_reg": float(w_reg.detach().mean())}
        return g_att, g_sim + g_reg, (sim.detach(), quant, bal), code.new_zeros(()), shown

    def _pair_attention(self, code, s, mask):
        """Huang et al.'s form: per known pair {i, j} and bit, a softmax over the pair's two codes decides which
        code takes the pair's gradient. Returns (attended gradient, plain gradient, loss parts, the penalty on
        the weights, what to log)."""
        n = code.shape[0]
        inner = (code @ code.t()).requires_grad_(True)
        sim = self._similarity_of_inner(inner, s, mask)
        c = torch.autograd.grad(sim, inner)[0]
        c = c + c.t()  # pair {i, j}'s coefficient: it sends c_ij h_j to h_i and c_ij h_i to h_j
        g_sim = c @ code  # = dL_sim/dh (j = i included: an item's pair with itself, if S counts it)
        quant, bal, g_reg = self._regulariser_gradient(code)
        g_plain = g_sim + g_reg

        first, second = torch.triu_indices(n, n, offset=1, device=code.device)
        known = mask[first, second] != 0
        first, second = first[known], second[known]
        coef = c[first, second].unsqueeze(1)  # (P, 1)
        to_first, to_second = coef * code[second], coef * code[first]  # (P, K): each code's share of the pair
        pair_norm = _rms(torch.cat([to_first, to_second])) if len(first) else code.new_ones(())
        batch_norm = _rms(g_plain)
        side_first = torch.stack([code[first], to_first / pair_norm, g_plain[first] / batch_norm], dim=-1)
        side_second = torch.stack([code[second], to_second / pair_norm, g_plain[second] / batch_norm], dim=-1)
        a = self.grad_attention(side_first, side_second)  # (P, K): first code's share; second's is 1 - a
        g_att = c.diagonal().unsqueeze(1) * code + g_reg
        g_att = g_att.index_add(0, first, 2.0 * a * to_first).index_add(0, second, 2.0 * (1.0 - a) * to_second)
        penalty = (a - 0.5).pow(2).mean() if len(first) else code.new_zeros(())
        shown = {"pair_share_spread": float((a.detach() - 0.5).abs().mean()) if len(first) else 0.0}
        return g_att, g_plain, (sim.detach(), quant, bal), self.params.attention_penalty * penalty, shown
