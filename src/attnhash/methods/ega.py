"""EGA: deep hashing with an explicitly guided attention mechanism (P. F. Zhu, master's thesis 2020; seed 003).

Only the abstract survives, so the design below is DESIGN.md's reading of it (every detail a choice):

Network: backbone -> CAM branch on the last feature map (attnhash.models.attention.cam) -> pooling -> hash
layer. The branch is "separable and can be put on any backbone": it only needs the last feature map.

Two stages, scheduled here (not in the trainer):
  stage 1 (`stage1_epochs` epochs): the branch's 1x1 class maps, global-average-pooled to class logits,
          are trained with classification (cross-entropy on single-label data, BCE-with-logits on
          multi-label data; the backbone's trainable stages learn with it). The hash layer is idle.
  stage 2: the branch is frozen (requires_grad off, its gradients and optimiser state dropped, and it is
          taken out of the optimiser's parameter groups so neither momentum nor weight decay can move it).
          A = ReLU(sum_c p_c M_c) normalised to [0, 1] per image weights the features: F' = F * (1 + A),
          pooled and hashed. Loss = DPSH's pairwise likelihood (theta = <u_i, u_j>/2, each batch against a
          memory bank of the relaxed codes of the training set) + eta * ||u - sign(u)||^2, eta = 0.1 as in
          the dpsh recipe.

Short runs: when train.epochs <= stage1_epochs the hashing stage would never run and the codes would be
random projections. Then stage 1 is shortened: to the first half of the epochs (epochs >= 2), or to the
first half of the steps of a single epoch; a warning says so. stage1_epochs = 0 starts with stage 2 on an
untrained branch (also warned). The stage is logged at every epoch start and returned in the step's parts.

Ablation `attention`: no CAM weighting (F' = F, plain pooled features); the branch is still trained in
stage 1 and frozen in stage 2, so the backbone sees the same schedule and only the weighting differs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from attnhash.config import ModelConfig
from attnhash.errors import ConfigError
from attnhash.losses.classification import classification_loss, is_single_label
from attnhash.losses.pairwise import MemoryBank, pairwise_likelihood
from attnhash.losses.quantization import quantization_loss
from attnhash.methods.base import Method, TrainContext, register_method
from attnhash.models.attention.cam import CAMAttention


@dataclass
class EGAParams:
    stage1_epochs: int = 2  # epochs of classification training of the CAM branch before hashing
    eta: float = 0.1  # weight of the quantisation term in stage 2
    scale: float = 0.5  # theta_ij = scale * <u_i, u_j> in the pairwise likelihood
    classification: str = "auto"  # auto | ce | bce


@register_method
class EGA(Method):
    name = "ega"
    paper = "Zhu. Deep Hashing Method for Image Retrieval with Explicitly Guided Attention Mechanism. Thesis 2020"
    summary = "CAM branch trained by classification (stage 1), then frozen as spatial weighting of the hash branch"
    supervised = True
    Params = EGAParams
    ablations = {"attention": "no CAM weighting of the features (the branch is still trained and frozen)"}

    def __init__(self, params, bits, num_classes, num_train, ablate=()):
        super().__init__(params or EGAParams(), bits, num_classes, num_train, ablate)
        p = self.params
        if p.stage1_epochs < 0 or p.eta < 0:
            raise ConfigError("ega: stage1_epochs and eta must not be negative")
        if p.classification not in ("auto", "ce", "bce"):
            raise ConfigError(f"ega: classification must be auto, ce or bce, got {p.classification!r}")
        self.stage = 1
        self.switch_epoch: int | None = None
        self.switch_step: int | None = None
        self.single_label = True
        self.bank: MemoryBank | None = None

    # ----- network -----------------------------------------------------------------------------------
    def adjust_model_config(self, cfg: ModelConfig) -> ModelConfig:
        if cfg.attention not in (None, "cam"):
            raise ConfigError(f"ega brings its own CAM attention; model.attention={cfg.attention!r} cannot be used")
        if cfg.attention_placement != "output":
            raise ConfigError("ega's CAM branch works on the last feature map (model.attention_placement=output)")
        return dataclasses.replace(
            cfg, attention="cam",
            attention_args={"num_classes": self.num_classes, "weighting": "attention" not in self.ablate},
        )

    @staticmethod
    def branch(ctx: TrainContext) -> CAMAttention:
        cam = ctx.network.attention
        if not isinstance(cam, CAMAttention):
            raise ConfigError("ega needs the network built by its own build_network (a CAM attention branch)")
        return cam

    # ----- schedule ----------------------------------------------------------------------------------
    def setup(self, ctx: TrainContext) -> None:
        p = self.params
        cam = self.branch(ctx)
        labels = ctx.train_labels
        self.single_label = is_single_label(labels) if p.classification == "auto" else p.classification == "ce"
        cam.multi_label.fill_(not self.single_label)
        self.bank = ctx.memory_bank(self.bits)
        if p.stage1_epochs == 0:
            ctx.log("ega: warning: stage1_epochs=0, hashing starts on an untrained CAM branch")
            self._enter_stage2(ctx)
            return
        self.stage = 1
        cam.stage.fill_(1)
        if ctx.epochs > p.stage1_epochs:
            self.switch_epoch = p.stage1_epochs
        elif ctx.epochs >= 2:
            self.switch_epoch = ctx.epochs // 2
            ctx.log(f"ega: warning: {ctx.epochs} epochs leave none for hashing after stage1_epochs="
                    f"{p.stage1_epochs}; classification for the first {self.switch_epoch}, hashing for the rest")
        else:
            steps = ctx.steps_per_epoch or len(ctx.train_loader)
            self.switch_step = max(1, steps // 2)
            ctx.log(f"ega: warning: a single epoch; classification for its first {self.switch_step} steps, "
                    f"hashing for the other {max(steps - self.switch_step, 0)}")

    def on_epoch_start(self, ctx: TrainContext) -> None:
        if self.stage == 1 and self.switch_epoch is not None and ctx.epoch >= self.switch_epoch:
            self._enter_stage2(ctx)
        what = "classification of the CAM branch" if self.stage == 1 else "hashing with the frozen CAM map"
        ctx.log(f"ega: epoch {ctx.epoch + 1}: stage {self.stage} ({what})")

    def on_resume(self, ctx: TrainContext) -> None:
        if self.stage == 2:  # the branch was frozen and left the optimiser before the checkpoint
            self._enter_stage2(ctx)

    def _enter_stage2(self, ctx: TrainContext) -> None:
        cam = self.branch(ctx)
        frozen = {id(p) for p in cam.parameters()}
        for p in cam.parameters():
            p.requires_grad_(False)
            p.grad = None
            ctx.optimizer.state.pop(p, None)  # no leftover momentum / Adam moments
        for group in ctx.optimizer.param_groups:  # nor weight decay: the optimiser no longer holds them
            group["params"] = [p for p in group["params"] if id(p) not in frozen]
        cam.stage.fill_(2)
        self.stage = 2
        ctx.log(f"ega: stage 2 from step {ctx.step}: CAM branch frozen"
                + ("" if cam.weighting else " (ablation: its map does not weight the features)"))

    def training_step(self, batch, ctx):
        if self.stage == 1 and self.switch_step is not None and ctx.step >= self.switch_step:
            self._enter_stage2(ctx)
        return super().training_step(batch, ctx)

    # ----- loss --------------------------------------------------------------------------------------
    def loss(self, out, batch, ctx):
        labels = batch["label"]
        if self.stage == 1:
            cls = classification_loss(out["cam_logits"], labels, self.single_label)
            return cls, {"classification": float(cls.detach()), "stage": 1.0}
        u = out["z"]
        self.bank.update(batch["index"], u)
        codes, s, mask = self.bank.pairs(labels)
        likelihood = pairwise_likelihood(u, codes, s, scale=self.params.scale, mask=mask)
        quant = quantization_loss(u)
        loss = likelihood + self.params.eta * quant
        return loss, {"likelihood": float(likelihood.detach()), "quantization": float(quant.detach()), "stage": 2.0}
