"""One pass over the training set in eval mode, for methods that need every item's output at set-up."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def collect_outputs(ctx, key: str) -> tuple[Tensor, Tensor]:
    """(N x D) rows of output `key` addressed by each batch's "index", and (N,) flags of the rows filled.

    The network runs in eval mode (fixed BatchNorm statistics, no dropout) and is put back in its previous
    mode afterwards. The trainer drops a last batch of one item, so a row can stay unfilled (flag False).
    """
    network = ctx.network
    was_training = network.training
    network.eval()
    rows: Tensor | None = None
    filled = torch.zeros(ctx.num_train, dtype=torch.bool, device=ctx.device)
    try:
        for batch in ctx.train_loader:
            out = ctx.forward(batch)[key].float()
            if rows is None:
                rows = torch.zeros(ctx.num_train, out.shape[1], device=ctx.device)
            index = batch["index"].to(ctx.device)
            rows[index] = out.to(ctx.device)
            filled[index] = True
    finally:
        network.train(was_training)
    if rows is None:
        raise RuntimeError("the training set is empty")
    return rows, filled
