"""DPFAH: Deep Parameter-Free Attention Hashing (Yang, Wang, Cheng, Sci Rep 12:7082, 2022; seed 000).

Network (paper, Fig. 1): backbone -> PFA (SimAM) added element-wise to the feature map it attends
(`simam_residual` after the last stage, the default) -> pooling -> two branches on the same features:
a hash branch u = tanh(W_h f + b_h) with K outputs and a classification branch (logits).
`model.attention_placement=blocks` with `model.attention=simam` puts SimAM inside every residual block
instead, where the SimAM reference does: right after conv2, before bn2 (a config choice, no parameters
either way).

Loss (the paper names its three parts; the exact forms are choices, DESIGN.md section 5):
    L = pairwise likelihood (DPSH: theta_ij = <u_i, u_j>/2, each batch against a memory bank of the
        relaxed codes of the whole training set)
      + alpha * quantisation  ||u - sign(u)||^2          (the paper's regulariser on the like-binary codes)
      + beta  * classification                           (cross-entropy for single-label data,
                                                          BCE-with-logits for multi-label data)
Every term is a mean (over pairs, code entries, items). The paper's grids (seed 000, "mAP for different
...") try one weight in {0.05, 0.1, 0.5, 1.0} (best 0.1) and the other in {1, 5, 10, 15} (best 10):
alpha = 0.1 on the quantisation term and beta = 10 on classification by default.

Single- or multi-label is read from the training labels once (every row sums to exactly 1 ->
single-label); `params.classification` forces "ce" or "bce".

Codes are sign(z) of the hash layer; tanh keeps the sign, so the encoder needs nothing of this file.

Ablations (seed 000's table: ResNet18 -> +PFA -> +regulariser; the AlexNet column is `--backbone alexnet`):
`attention` removes the PFA, `regularizer` the quantisation term, `classifier` the classification branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnhash.config import ModelConfig
from attnhash.errors import ConfigError
from attnhash.losses.classification import classification_loss, is_single_label
from attnhash.losses.pairwise import MemoryBank, label_similarity, pairwise_likelihood
from attnhash.losses.quantization import quantization_loss
from attnhash.methods.base import Method, TrainContext, register_method


@dataclass
class DPFAHParams:
    alpha: float = 0.1  # weight of the quantisation regulariser (paper's grid best)
    beta: float = 10.0  # weight of the classification loss (paper's grid best)
    scale: float = 0.5  # theta_ij = scale * <u_i, u_j> in the pairwise likelihood (DPSH's 1/2)
    classification: str = "auto"  # auto | ce | bce


@register_method
class DPFAH(Method):
    name = "dpfah"
    paper = "Yang, Wang, Cheng. Deep parameter-free attention hashing for image retrieval. Sci Rep 2022"
    summary = ("SimAM parameter-free attention added to the last feature map; tanh hash branch + "
               "classification branch; pairwise likelihood + 0.1 quantisation + 10 classification")
    supervised = True
    Params = DPFAHParams
    uses_classifier = True
    ablations = {
        "attention": "no parameter-free attention (PFA) module",
        "regularizer": "no quantisation regulariser ||u - sign(u)||^2",
        "classifier": "no classification branch (and no classification loss)",
    }

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params if params is not None else DPFAHParams(), bits, num_classes, num_train, ablate)
        if self.params.classification not in ("auto", "ce", "bce"):
            raise ConfigError(f"dpfah: classification must be auto, ce or bce, got {self.params.classification!r}")
        # an instance attribute: the base class builds the classifier only when this is true
        self.uses_classifier = "classifier" not in self.ablate
        self.single_label: bool | None = None
        self.bank: MemoryBank | None = None

    def adjust_model_config(self, cfg: ModelConfig) -> ModelConfig:
        if "attention" in self.ablate:
            cfg.attention = None
        return cfg

    def setup(self, ctx: TrainContext) -> None:
        self.bank = ctx.memory_bank(self.bits)
        self.single_label = self._single_label(ctx.train_labels)

    def _single_label(self, labels: Tensor) -> bool:
        mode = self.params.classification
        return is_single_label(labels) if mode == "auto" else mode == "ce"

    def loss(self, out, batch, ctx):
        u = torch.tanh(out["z"])
        labels = batch["label"]
        if self.bank is None:  # loss used outside the trainer: pairs within the batch
            others, s, mask = u, label_similarity(labels, labels), None
        else:
            self.bank.update(batch["index"], u)
            others, s, mask = self.bank.pairs(labels)
        likelihood = pairwise_likelihood(u, others, s, scale=self.params.scale, mask=mask)
        loss = likelihood
        parts = {"likelihood": float(likelihood.detach())}
        if "regularizer" not in self.ablate:
            quant = quantization_loss(u)
            loss = loss + self.params.alpha * quant
            parts["quantization"] = float(quant.detach())
        if "classifier" not in self.ablate:
            single = self.single_label if self.single_label is not None else self._single_label(labels)
            cls = classification_loss(out["logits"], labels, single)
            loss = loss + self.params.beta * cls
            parts["classification"] = float(cls.detach())
        return loss, parts
