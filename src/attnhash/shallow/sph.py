"""SpH: Spherical Hashing.

Heo, Lee, He, Chang, Yoon, "Spherical hashing", CVPR 2012, pp. 2957-2964.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnhash.errors import CheckpointError
from attnhash.shallow._numeric import squared_distances
from attnhash.shallow.base import ShallowHasher, check_float, check_int, register_shallow

__all__ = ["SphericalHashing"]


@register_shallow
class SphericalHashing(ShallowHasher):
    """Bit i = +1 when x lies inside hypersphere i (||x - p_i|| <= t_i), -1 outside.

    Fitting follows the paper's iterative procedure on a training sample of m points:
    - each radius t_i is set so that sphere i holds half of the sample (balanced bits);
    - the overlap o_ij (points inside both i and j) should be m/4 (independent bits). Each pivot moves by
      the mean over the other spheres of the force f_{j->i} = 1/2 (o_ij - m/4) / (m/4) (p_i - p_j), pushing
      apart spheres that overlap too much and pulling together those that overlap too little; then the
      radii are reset to the half-sample median;
    - stop when the mean of the o_ij (i != j) is within eps_mean * m/4 of m/4 and their standard deviation
      is at most eps_std * m/4 (the paper's 10% and 15%), or after ``max_iter`` rounds.
    Initial pivots are means of ``init_points`` random sample points, so they start inside the data.

    Note: the paper ranks with its *spherical Hamming distance*, (number of differing bits) / (number of
    spheres containing both points), which rewards shared "inside" bits. attnhash ranks every method by
    plain Hamming distance (DESIGN.md section 4), so SpH is evaluated here with plain Hamming as well.

    After fit: ``history_`` (rounds, 2) holds the overlap mean and std per round, ``converged_`` whether the
    tolerances were met, ``sample_fraction_inside_`` the fraction of the sample inside each sphere.
    """

    name = "sph"
    paper = "Heo, Lee, He, Chang, Yoon, CVPR 2012"
    _param_names = ("sample_size", "max_iter", "eps_mean", "eps_std", "init_points")
    _array_names = ("pivots", "radii")
    _min_fit_samples = 4

    def __init__(
        self,
        bits: int,
        seed: int = 0,
        sample_size: int = 5000,
        max_iter: int = 100,
        eps_mean: float = 0.10,
        eps_std: float = 0.15,
        init_points: int = 5,
        **unknown: Any,
    ) -> None:
        super().__init__(bits, seed, **unknown)
        self.sample_size = check_int(self.name, "sample_size", sample_size, minimum=4)
        self.max_iter = check_int(self.name, "max_iter", max_iter, minimum=0)
        self.eps_mean = check_float(self.name, "eps_mean", eps_mean, 0.0, 1.0)
        self.eps_std = check_float(self.name, "eps_std", eps_std, 0.0, 1.0)
        self.init_points = check_int(self.name, "init_points", init_points, minimum=1)
        self.pivots_: np.ndarray | None = None
        self.radii_: np.ndarray | None = None
        self.history_: np.ndarray | None = None
        self.converged_: bool | None = None
        self.sample_fraction_inside_: np.ndarray | None = None

    @staticmethod
    def _half_radius2(d2: np.ndarray) -> np.ndarray:
        """Squared radius per column putting floor(m/2) points inside: midway between the m/2-th and next distance."""
        m = d2.shape[0]
        h = m // 2
        part = np.partition(d2, (h - 1, h), axis=0)
        r = 0.5 * (np.sqrt(part[h - 1]) + np.sqrt(part[h]))
        return r * r

    def _fit(self, x: np.ndarray) -> None:
        rng = np.random.default_rng(self.seed)
        n = x.shape[0]
        m = min(self.sample_size, n)
        sample = x if m == n else x[np.sort(rng.choice(n, size=m, replace=False))]
        k = min(self.init_points, m)
        pivots = np.stack([sample[rng.choice(m, size=k, replace=False)].mean(axis=0) for _ in range(self.bits)])
        s_sq = np.einsum("ij,ij->i", sample, sample)
        d2 = squared_distances(sample, pivots, s_sq)
        r2 = self._half_radius2(d2)
        quarter = m / 4.0
        off_diag = ~np.eye(self.bits, dtype=bool)
        history = []
        converged = False
        for _ in range(self.max_iter + 1):
            inside = (d2 <= r2).astype(np.float64)
            overlap = inside.T @ inside
            o = overlap[off_diag]
            mean, std = float(o.mean()), float(o.std())
            history.append((mean, std))
            if abs(mean - quarter) <= self.eps_mean * quarter and std <= self.eps_std * quarter:
                converged = True
                break
            if len(history) > self.max_iter:
                break
            f = 0.5 * (overlap - quarter) / quarter
            np.fill_diagonal(f, 0.0)
            # mean over j of f_ij (p_i - p_j), for all i at once
            pivots = pivots + (f.sum(axis=1)[:, None] * pivots - f @ pivots) / self.bits
            d2 = squared_distances(sample, pivots, s_sq)
            r2 = self._half_radius2(d2)
        self.pivots_, self.radii_ = pivots, np.sqrt(r2)
        self.history_ = np.asarray(history)
        self.converged_ = converged
        self.sample_fraction_inside_ = (d2 <= r2).mean(axis=0)

    def _prepare(self) -> None:
        self._p_sq = np.einsum("ij,ij->i", self.pivots_, self.pivots_)
        self._r2 = self.radii_.astype(np.float64) ** 2

    def _project(self, x: np.ndarray) -> np.ndarray:
        # t^2 - ||x - p||^2 >= 0 inside (on the sphere counts as inside: sign(0) = +1)
        x_sq = np.einsum("ij,ij->i", x, x)
        return self._r2[None, :] - (x_sq[:, None] - 2.0 * (x @ self.pivots_.T) + self._p_sq[None, :])

    def _state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"pivots": (self.bits, self.dim_), "radii": (self.bits,)}

    def _check_state(self) -> None:
        if np.any(self.radii_ < 0):
            raise CheckpointError("sph state: negative radius")
