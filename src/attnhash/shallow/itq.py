"""ITQ: Iterative Quantization.

Gong & Lazebnik, "Iterative quantization: a Procrustean approach to learning binary codes", CVPR 2011;
Gong, Lazebnik, Gordo, Perronnin, TPAMI 35(12), 2013.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnhash.codes import binarize
from attnhash.errors import CheckpointError
from attnhash.shallow._numeric import pca, random_orthogonal
from attnhash.shallow.base import ShallowHasher, check_int, register_shallow
from attnhash.shallow.pcah import check_pca_bits

__all__ = ["ITQ"]


@register_shallow
class ITQ(ShallowHasher):
    """PCA to ``bits`` dimensions, then the rotation R minimising the quantisation loss ||B - V R||_F^2.

    V is the centred data projected on the top-``bits`` principal directions. From a random orthogonal
    R, ``n_iter`` rounds alternate the two exact minimisers: B = sign(V R) for fixed R, and for fixed B the
    orthogonal Procrustes solution R = U W^T, where V^T B = U S W^T. Neither step can raise the loss, so
    ``history_`` (the loss at R_0, R_1, ..., R_n_iter, each with its best B) never increases.
    """

    name = "itq"
    paper = "Gong & Lazebnik, CVPR 2011; Gong et al., TPAMI 2013"
    _param_names = ("n_iter",)
    _array_names = ("mean", "components", "rotation")

    def __init__(self, bits: int, seed: int = 0, n_iter: int = 50, **unknown: Any) -> None:
        super().__init__(bits, seed, **unknown)
        self.n_iter = check_int(self.name, "n_iter", n_iter, minimum=0)
        self.mean_: np.ndarray | None = None
        self.components_: np.ndarray | None = None
        self.rotation_: np.ndarray | None = None
        self.history_: np.ndarray | None = None

    def _fit(self, x: np.ndarray) -> None:
        check_pca_bits(self.name, self.bits, *x.shape)
        mean, components, _ = pca(x, self.bits)
        v = (x - mean) @ components
        r = random_orthogonal(self.bits, np.random.default_rng(self.seed))
        history = []
        for it in range(self.n_iter + 1):
            z = v @ r
            b = binarize(z).astype(np.float64)
            history.append(float(np.sum((b - z) ** 2)))
            if it == self.n_iter:
                break
            u, _, wt = np.linalg.svd(v.T @ b)
            r = u @ wt
        self.mean_, self.components_, self.rotation_ = mean, components, r
        self.history_ = np.asarray(history)

    def _prepare(self) -> None:
        self._projection = self.components_ @ self.rotation_  # fuse PCA and rotation: one GEMM per block
        self._offset = self.mean_ @ self._projection

    def _project(self, x: np.ndarray) -> np.ndarray:
        return x @ self._projection - self._offset

    def _state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"mean": (self.dim_,), "components": (self.dim_, self.bits), "rotation": (self.bits, self.bits)}

    def _check_state(self) -> None:
        r = self.rotation_.astype(np.float64)
        if not np.allclose(r @ r.T, np.eye(self.bits), atol=1e-5):
            raise CheckpointError("itq state: the rotation is not orthogonal")
