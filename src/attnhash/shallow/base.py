"""The one shape every shallow (non-deep) hasher has: a scikit-learn style estimator on feature matrices.

A hasher maps an (n, d) real feature matrix to (n, bits) int8 codes in {-1, +1} (sign(0) = +1, the
attnhash convention). Data-dependent hashers learn their function with ``fit`` (unsupervised); a fitted
hasher is saved as a flat ``dict[str, np.ndarray]`` (``state_dict``) so it can travel inside an index file
or a run folder (safetensors / npz friendly: numbers only, the method name as ASCII bytes).

Subclasses declare their hyperparameters (``_param_names``) and fitted arrays (``_array_names``, stored on
the instance with a trailing underscore), and implement ``_fit`` (float64 features, already checked) and
``_project`` (float64 block -> real values whose sign is the code).
"""

from __future__ import annotations

import numbers
from typing import Any, ClassVar, Mapping

import numpy as np

from attnhash.codes import MIN_BITS, binarize
from attnhash.errors import CheckpointError, ConfigError
from attnhash.registry import Registry

__all__ = [
    "ShallowHasher",
    "HASHERS",
    "register_shallow",
    "create_shallow",
    "load_shallow",
]

# Rows encoded per block: bounds the float64 copy of a large feature matrix (8192 x 1280 x 8 B = 84 MB).
ENCODE_CHUNK = 8192

HASHERS: Registry = Registry("shallow hashing method", package="attnhash.shallow")
register_shallow = HASHERS.register()  # class decorator: a hasher registers under its `name`


def create_shallow(name: str, bits: int, seed: int = 0, **params: Any) -> "ShallowHasher":
    """Build an (unfitted) hasher by registry name, e.g. ``create_shallow("itq", 64, n_iter=50)``."""
    cls = HASHERS.get(name)
    unknown = sorted(set(params) - set(cls._param_names))
    if unknown:
        allowed = ", ".join(cls._param_names) or "none"
        raise ConfigError(f"{cls.name}: unknown parameter(s) {', '.join(unknown)}; parameters: {allowed}")
    return cls(bits, seed=seed, **params)


def load_shallow(state: Mapping[str, Any]) -> "ShallowHasher":
    """Rebuild a fitted hasher of whichever method wrote ``state`` (its ``method`` entry)."""
    return HASHERS.get(_method_of(state)).from_state_dict(state)


def _method_of(state: Mapping[str, Any]) -> str:
    if "method" not in state:
        raise CheckpointError("shallow hasher state has no 'method' entry; it was not written by state_dict()")
    raw = np.asarray(state["method"])
    if raw.dtype.kind in "US":  # a plain string (e.g. from JSON) is accepted too
        return str(raw.item() if raw.ndim == 0 else "".join(raw.ravel().tolist()))
    try:
        return raw.astype(np.uint8).tobytes().decode("ascii")
    except (UnicodeDecodeError, ValueError, TypeError) as exc:
        raise CheckpointError("shallow hasher state: 'method' is not an ASCII byte array") from exc


# ---------------------------------------------------------------------------------------------- checks


def check_int(owner: str, name: str, value: Any, minimum: int) -> int:
    """An integer hyperparameter (bools and non-integral floats refused) >= minimum."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and float(value).is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{owner}: {name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ConfigError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return value


def check_float(owner: str, name: str, value: Any, low: float, high: float | None = None,
                low_open: bool = False) -> float:
    """A real hyperparameter in [low, high] (or (low, high] when low_open)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{owner}: {name} must be a number, got {value!r}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    if not np.isfinite(value) or too_low or (high is not None and value > high):
        bound = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}]"
        raise ConfigError(f"{owner}: {name} must be in {bound}, got {value}")
    return value


def _check_bits(owner: str, bits: Any) -> int:
    bits = check_int(owner, "bits", bits, minimum=1)
    if bits < MIN_BITS:
        raise ConfigError(f"{owner}: bits must be at least {MIN_BITS}, got {bits}")
    return bits


def _as_matrix(owner: str, features: Any, dim: int | None) -> np.ndarray:
    """Shape and dtype checks shared by fit and encode; values are checked for NaN/inf later, per block."""
    if hasattr(features, "detach"):  # a torch tensor, without importing torch
        features = features.detach().cpu().numpy()
    x = np.asarray(features)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ConfigError(f"{owner}: features must be a numeric array, got dtype {x.dtype}")
    if np.iscomplexobj(x):
        raise ConfigError(f"{owner}: features must be real, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ConfigError(f"{owner}: features must be a 2-D (n, d) matrix, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ConfigError(f"{owner}: features must be non-empty, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ConfigError(f"{owner}: fitted on {dim}-D features, got {x.shape[1]}-D features")
    return x


def _as_finite_float64(owner: str, block: np.ndarray, row_offset: int = 0) -> np.ndarray:
    out = np.asarray(block, dtype=np.float64)
    finite = np.isfinite(out)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0]) + row_offset
        raise ConfigError(f"{owner}: features contain NaN or inf (first at row {row})")
    return out


# ------------------------------------------------------------------------------------------ the estimator


class ShallowHasher:
    """Base class: ``fit`` (unsupervised) -> ``encode`` to {-1,+1} codes; ``state_dict`` round trip."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    data_dependent: ClassVar[bool] = True
    _param_names: ClassVar[tuple[str, ...]] = ()
    _array_names: ClassVar[tuple[str, ...]] = ()
    _min_fit_samples: ClassVar[int] = 2

    def __init__(self, bits: int, seed: int = 0, **params: Any) -> None:
        owner = self.name or type(self).__name__
        if params:
            allowed = ", ".join(self._param_names) or "none"
            raise ConfigError(f"{owner}: unknown parameter(s) {', '.join(sorted(params))}; parameters: {allowed}")
        self.bits = _check_bits(owner, bits)
        self.seed = check_int(owner, "seed", seed, minimum=0)
        self.dim_: int | None = None

    # -- public API -------------------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        return self.dim_ is not None

    def fit(self, features: np.ndarray) -> "ShallowHasher":
        """Learn the hash functions from an (n, d) training matrix (no labels). Returns self."""
        x = _as_matrix(f"{self.name}.fit", features, dim=None)
        if x.shape[0] < self._min_fit_samples:
            raise ConfigError(
                f"{self.name}.fit: needs at least {self._min_fit_samples} training points, got {x.shape[0]}"
            )
        x = _as_finite_float64(f"{self.name}.fit", x)
        self._fit(x)
        self.dim_ = int(x.shape[1])
        self._prepare()
        return self

    def encode(self, features: np.ndarray) -> np.ndarray:
        """(n, d) features -> (n, bits) int8 codes in {-1, +1}; computed in float64, block by block."""
        owner = f"{self.name}.encode"
        if not self.is_fitted and self.data_dependent:
            raise ConfigError(f"{self.name}: call fit() before encode(); this hasher learns from data")
        x = _as_matrix(owner, features, dim=self.dim_)
        if not self.is_fitted:  # data-independent: the functions only need the dimension
            self._init_dim(int(x.shape[1]))
            self.dim_ = int(x.shape[1])
            self._prepare()
        codes = np.empty((x.shape[0], self.bits), dtype=np.int8)
        for start in range(0, x.shape[0], ENCODE_CHUNK):
            block = _as_finite_float64(owner, x[start:start + ENCODE_CHUNK], row_offset=start)
            codes[start:start + len(block)] = binarize(self._project(block))
        return codes

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything ``encode`` needs: fitted arrays, plus bits/seed/dim/hyperparameters as 0-d arrays."""
        if not self.is_fitted:
            raise ConfigError(f"{self.name}: nothing to save before fit()")
        state: dict[str, np.ndarray] = {
            "method": np.frombuffer(self.name.encode("ascii"), dtype=np.uint8).copy(),
            "bits": np.array(self.bits, dtype=np.int64),
            "seed": np.array(self.seed, dtype=np.int64),
            "dim": np.array(self.dim_, dtype=np.int64),
        }
        for p in self._param_names:
            value = getattr(self, p)
            state[p] = np.array(value, dtype=np.int64 if isinstance(value, int) else np.float64)
        for a in self._array_names:
            state[a] = np.array(getattr(self, a + "_"), copy=True)
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "ShallowHasher":
        """Rebuild a fitted hasher from ``state_dict()`` output (arrays may also be torch tensors)."""
        state = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)) for k, v in state.items()}
        method = _method_of(state)
        if method != cls.name:
            raise CheckpointError(f"state was written by shallow method {method!r}, not {cls.name!r}")
        needed = ("bits", "seed", "dim", *cls._param_names, *cls._array_names)
        missing = [k for k in needed if k not in state]
        if missing:
            raise CheckpointError(f"{cls.name} state is missing {', '.join(missing)}")
        # 0-d as written; a 1-element array is accepted too (np.ascontiguousarray and some writers make 0-d 1-d)
        scalars = {k: state[k].reshape(-1) for k in ("bits", "seed", "dim", *cls._param_names)}
        bad = [k for k, v in scalars.items() if v.size != 1]
        if bad:
            raise CheckpointError(f"{cls.name} state: {', '.join(bad)} must be single numbers (0-d arrays)")
        scalars = {k: v[0] for k, v in scalars.items()}
        try:
            obj = cls(int(scalars["bits"]), seed=int(scalars["seed"]),
                      **{p: scalars[p].item() for p in cls._param_names})
        except ConfigError as exc:
            raise CheckpointError(f"{cls.name} state holds invalid settings: {exc}") from exc
        dim = int(scalars["dim"])
        if dim < 1:
            raise CheckpointError(f"{cls.name} state: dim must be >= 1, got {dim}")
        obj.dim_ = dim
        expected = obj._state_shapes()
        for a in cls._array_names:
            arr = state[a]
            if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
                raise CheckpointError(f"{cls.name} state: {a!r} is not numeric (dtype {arr.dtype})")
            if tuple(arr.shape) != expected[a]:
                raise CheckpointError(f"{cls.name} state: {a!r} has shape {arr.shape}, expected {expected[a]}")
            if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                raise CheckpointError(f"{cls.name} state: {a!r} contains NaN or inf")
            setattr(obj, a + "_", arr.copy())
        obj._check_state()
        obj._prepare()
        return obj

    def __repr__(self) -> str:
        params = "".join(f", {p}={getattr(self, p)!r}" for p in self._param_names)
        fitted = f", dim={self.dim_}" if self.is_fitted else ", unfitted"
        return f"{type(self).__name__}(bits={self.bits}, seed={self.seed}{params}{fitted})"

    # -- hooks for subclasses ---------------------------------------------------------------------------

    def _fit(self, x: np.ndarray) -> None:
        """Learn from finite float64 (n, d) features; set the fitted arrays."""
        raise NotImplementedError

    def _init_dim(self, dim: int) -> None:
        """Data-independent hashers: build the functions from the dimension alone."""
        raise NotImplementedError

    def _project(self, x: np.ndarray) -> np.ndarray:
        """Finite float64 (m, d) block -> (m, bits) real values; the code is their sign (0 -> +1)."""
        raise NotImplementedError

    def _state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected shape of each fitted array, from bits and dim_ (used to validate loaded state)."""
        raise NotImplementedError

    def _check_state(self) -> None:
        """Extra consistency checks on loaded arrays (raise CheckpointError)."""

    def _prepare(self) -> None:
        """Precompute what encode uses (fused projections...) after fit or load."""
