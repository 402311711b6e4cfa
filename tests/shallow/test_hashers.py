"""Shallow hashers (attnhash.shallow): each method's defining property, the shared estimator contract, errors."""

from __future__ import annotations

import numpy as np
import pytest

from attnhash.errors import CheckpointError, ConfigError
from attnhash.metrics import mean_average_precision
from attnhash.shallow import (
    HASHERS,
    ITQ,
    LSH,
    DensitySensitiveHashing,
    SpectralHashing,
    SphericalHashing,
    create_shallow,
    load_shallow,
)

ALL = sorted(HASHERS)


def gaussian_clusters(n_per_class: int, seed: int, dim: int = 64, classes: int = 10, spread: float = 1.5):
    """Points around 10 fixed centres (the centres do not depend on `seed`, only the noise does)."""
    centres = np.random.default_rng(1234).normal(0.0, 1.0, (classes, dim)) * spread
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    x = centres[labels] + rng.normal(0.0, 1.0, (len(labels), dim))
    return x, labels


@pytest.fixture(scope="module")
def clusters():
    train, _ = gaussian_clusters(60, seed=1)
    query, q_labels = gaussian_clusters(20, seed=2)
    db, db_labels = gaussian_clusters(100, seed=3)
    return train, query, q_labels, db, db_labels


@pytest.fixture(scope="module")
def fitted(clusters):
    train = clusters[0]
    return {name: create_shallow(name, 32, seed=0).fit(train) for name in ALL}


# ------------------------------------------------------------------------------------- registry and API


def test_registry_holds_every_method():
    assert {"lsh", "pcah", "sh", "itq", "sph", "density_sensitive"} <= set(HASHERS)
    for name, cls in HASHERS.items():
        assert cls.name == name and cls.paper


def test_create_shallow_errors():
    with pytest.raises(ConfigError, match="unknown shallow hashing method"):
        create_shallow("dsh", 16)  # the deep supervised DSH lives elsewhere
    with pytest.raises(ConfigError, match="unknown parameter"):
        create_shallow("itq", 16, n_iters=3)
    assert isinstance(create_shallow("ITQ", 16, n_iter=3), ITQ)


@pytest.mark.parametrize("name", ALL)
def test_codes_shape_dtype_values(name, fitted, clusters):
    codes = fitted[name].encode(clusters[3])
    assert codes.shape == (len(clusters[3]), 32) and codes.dtype == np.int8
    assert set(np.unique(codes)) <= {-1, 1}


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip(name, fitted, clusters):
    hasher = fitted[name]
    state = hasher.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert state["bits"].ndim == 0 and int(state["bits"]) == 32
    expected = hasher.encode(clusters[3])
    from safetensors.numpy import load as st_load
    from safetensors.numpy import save as st_save

    on_disk = st_load(st_save({k: np.ascontiguousarray(v) for k, v in state.items()}))  # as a checkpoint holds it
    for clone in (type(hasher).from_state_dict(state), load_shallow(state), load_shallow(on_disk)):
        assert type(clone) is type(hasher)
        np.testing.assert_array_equal(clone.encode(clusters[3]), expected)
    # the saved arrays are copies: changing them does not change the fitted hasher
    for value in state.values():
        if value.dtype.kind == "f" and value.ndim:
            value[...] = 0
    np.testing.assert_array_equal(hasher.encode(clusters[3]), expected)


@pytest.mark.parametrize("name", ALL)
def test_bad_state_raises(name, fitted):
    state = fitted[name].state_dict()
    array = HASHERS.get(name)._array_names[0]
    with pytest.raises(CheckpointError, match="missing"):
        type(fitted[name]).from_state_dict({k: v for k, v in state.items() if k != array})
    with pytest.raises(CheckpointError, match="shape"):
        type(fitted[name]).from_state_dict({**state, array: state[array][..., :-1]})
    other = "itq" if name != "itq" else "lsh"
    with pytest.raises(CheckpointError, match="not"):
        HASHERS.get(other).from_state_dict(state)


@pytest.mark.parametrize("name", ALL)
def test_bad_inputs_raise(name, fitted, clusters):
    train = clusters[0]
    cls = HASHERS.get(name)
    for bits in (0, -8, 3, 16.5, True):
        with pytest.raises(ConfigError, match="bits"):
            cls(bits)
    assert cls(12).encode(train).shape[1] == 12 if not cls.data_dependent else cls(12).fit(train).encode(train).shape[1] == 12
    fresh = cls(16)
    if cls.data_dependent:
        with pytest.raises(ConfigError, match="fit"):
            fresh.encode(train)
    with pytest.raises(ConfigError, match="fit"):
        fresh.state_dict()
    hasher = fitted[name]
    with pytest.raises(ConfigError, match="64-D"):
        hasher.encode(train[:, :32])
    bad = train.copy()
    bad[5, 3] = np.nan
    with pytest.raises(ConfigError, match="NaN or inf.*row 5"):
        hasher.encode(bad)
    with pytest.raises(ConfigError, match="NaN or inf"):
        cls(16).fit(bad)
    bad[5, 3] = np.inf
    with pytest.raises(ConfigError, match="NaN or inf"):
        hasher.encode(bad)
    with pytest.raises(ConfigError, match="2-D"):
        hasher.encode(train[0])
    with pytest.raises(ConfigError, match="numeric"):
        hasher.encode(np.array([["a"] * 64]))


@pytest.mark.parametrize("name", ["itq", "pcah"])
def test_pca_methods_refuse_more_bits_than_dimensions(name):
    x = np.random.default_rng(0).normal(size=(200, 12))
    with pytest.raises(ConfigError, match="12-D"):
        create_shallow(name, 16).fit(x)


@pytest.mark.parametrize("name", ["lsh", "sh", "sph", "density_sensitive"])
def test_other_methods_make_more_bits_than_dimensions(name):
    x = np.random.default_rng(0).normal(size=(400, 12))
    codes = create_shallow(name, 32).fit(x).encode(x)
    assert codes.shape == (400, 32)


@pytest.fixture(scope="module")
def cluster_map(fitted, clusters):
    _, query, q_labels, db, db_labels = clusters
    return {
        name: mean_average_precision(hasher.encode(query), hasher.encode(db), q_labels, db_labels)
        for name, hasher in fitted.items()
    }


def test_random_codes_score_chance(clusters):
    _, query, q_labels, db, db_labels = clusters
    rng = np.random.default_rng(0)
    chance = mean_average_precision(
        rng.choice([-1, 1], (len(query), 32)), rng.choice([-1, 1], (len(db), 32)), q_labels, db_labels
    )
    assert chance < 0.15  # 10 balanced classes: about 0.1


@pytest.mark.parametrize("name", ALL)
def test_retrieval_far_above_random_on_gaussian_clusters(name, cluster_map):
    assert cluster_map[name] > 0.4, f"{name}: mAP {cluster_map[name]:.3f} (random codes: about 0.1)"


def test_itq_rotation_beats_plain_pca_codes(cluster_map):
    # the ITQ paper's point: same PCA subspace, the learned rotation balances variance across bits
    assert cluster_map["itq"] > 0.9
    assert cluster_map["itq"] > cluster_map["pcah"] + 0.2


def test_accepts_float32_and_integer_features(fitted, clusters):
    hasher = fitted["itq"]
    x = clusters[3]
    x32 = x.astype(np.float32)
    np.testing.assert_array_equal(hasher.encode(x32), hasher.encode(x32.astype(np.float64)))
    pixels = np.random.default_rng(0).integers(0, 256, (300, 20), dtype=np.uint8)
    itq = ITQ(16).fit(pixels)
    np.testing.assert_array_equal(itq.encode(pixels), itq.encode(pixels.astype(np.float64)))


# -------------------------------------------------------------------------------------------------- ITQ


def test_itq_rotation_orthogonal_and_loss_never_increases(clusters):
    itq = ITQ(32, seed=3).fit(clusters[0])
    r = itq.rotation_
    np.testing.assert_allclose(r @ r.T, np.eye(32), atol=1e-6)
    h = itq.history_
    assert len(h) == itq.n_iter + 1 == 51
    assert np.all(np.diff(h) <= 1e-9 * h[0])
    assert h[-1] < h[0]


def test_itq_rotation_beats_plain_pca_quantisation(clusters):
    train = clusters[0]
    itq = ITQ(32).fit(train)
    v = (train - itq.mean_) @ itq.components_
    pca_loss = np.sum((np.where(v >= 0, 1.0, -1.0) - v) ** 2)
    assert itq.history_[-1] < pca_loss


# --------------------------------------------------------------------------------------------------- SH


def test_sh_one_dimensional_modes_have_k_sign_changes():
    x = np.sort(np.random.default_rng(0).uniform(0.0, 7.0, 3000))[:, None]
    sh = SpectralHashing(8).fit(x)
    np.testing.assert_array_equal(sh.modes_[:, 0], 0)
    np.testing.assert_array_equal(sh.modes_[:, 1], np.arange(1, 9))  # smallest eigenvalue first
    codes = sh.encode(x)
    changes = np.sum(codes[1:] != codes[:-1], axis=0)
    np.testing.assert_array_equal(changes, sh.modes_[:, 1])


def test_sh_long_side_gets_more_modes():
    rng = np.random.default_rng(0)
    x = np.stack([rng.uniform(0, 4.0, 4000), rng.uniform(0, 1.5, 4000)], axis=1)
    sh = SpectralHashing(8).fit(x)
    assert abs(sh.components_[0, 0]) > 0.99  # first PCA direction is the long x-axis
    per_direction = np.bincount(sh.modes_[:, 0], minlength=2)
    # eigenvalues ~ (k/4)^2 and (k/1.5)^2: the 8 smallest are k=1..6 on the long side, k=1..2 on the short
    np.testing.assert_array_equal(per_direction, [6, 2])
    long_modes = sh.modes_[sh.modes_[:, 0] == 0, 1]
    np.testing.assert_array_equal(np.sort(long_modes), np.arange(1, 7))


# -------------------------------------------------------------------------------------------------- LSH


def test_lsh_is_data_independent_and_seeded():
    rng = np.random.default_rng(0)
    a, b, probe = rng.normal(size=(100, 40)), rng.uniform(5, 9, size=(300, 40)), rng.normal(size=(50, 40))
    codes_a = LSH(32, seed=7).fit(a).encode(probe)
    np.testing.assert_array_equal(codes_a, LSH(32, seed=7).fit(b).encode(probe))
    np.testing.assert_array_equal(codes_a, LSH(32, seed=7).encode(probe))  # no fit needed
    assert not np.array_equal(codes_a, LSH(32, seed=8).fit(a).encode(probe))


def test_lsh_collision_rate_follows_angle():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(1, 64))
    v = u + 0.8 * rng.normal(size=(1, 64))
    angle = np.arccos((u @ v.T).item() / (np.linalg.norm(u) * np.linalg.norm(v)))
    codes = LSH(4096, seed=0).encode(np.vstack([u, v]))
    differ = np.mean(codes[0] != codes[1])
    assert abs(differ - angle / np.pi) < 0.03


# -------------------------------------------------------------------------------------------------- SpH


def test_sph_spheres_hold_half_the_training_points():
    x = np.random.default_rng(0).normal(size=(2000, 16))
    sph = SphericalHashing(32, seed=0).fit(x)
    assert sph.converged_
    inside = (sph.encode(x) > 0).mean(axis=0)
    np.testing.assert_allclose(inside, 0.5, atol=0.01)
    np.testing.assert_allclose(sph.sample_fraction_inside_, 0.5, atol=1e-3)
    # the paper's tolerances on the pairwise overlaps at convergence (10% of n/4 on the mean, 15% on the std)
    mean, std = sph.history_[-1]
    assert abs(mean - 500) <= 0.10 * 500 and std <= 0.15 * 500


def test_sph_sample_is_seeded_subset():
    x = np.random.default_rng(0).normal(size=(1500, 8))
    a = SphericalHashing(16, seed=1, sample_size=400).fit(x)
    b = SphericalHashing(16, seed=1, sample_size=400).fit(x)
    np.testing.assert_array_equal(a.pivots_, b.pivots_)
    assert not np.array_equal(a.pivots_, SphericalHashing(16, seed=2, sample_size=400).fit(x).pivots_)


# ------------------------------------------------------------------------------------------ DSH-density


def test_density_sensitive_distinct_balanced_projections(clusters):
    train = clusters[0]
    dsh = DensitySensitiveHashing(32, seed=0).fit(train)
    w = dsh.projections_ / np.linalg.norm(dsh.projections_, axis=1, keepdims=True)
    cos = np.abs(w @ w.T)[~np.eye(32, dtype=bool)]
    assert cos.max() < 1 - 1e-9  # 32 distinct hyperplanes
    assert len({tuple(p) for p in dsh.pairs_}) == 32
    assert dsh.centres_.shape == (48, 64)  # alpha * bits groups
    positive = (dsh.encode(train) > 0).mean(axis=0)
    assert np.all((positive > 0.05) & (positive < 0.95)), positive
    assert np.all(np.diff(dsh.entropy_) <= 0)  # kept in entropy order


def test_density_sensitive_needs_enough_points():
    with pytest.raises(ConfigError, match="groups"):
        DensitySensitiveHashing(64).fit(np.random.default_rng(0).normal(size=(50, 8)))


def test_unknown_keyword_and_bad_params_raise_config_error():
    with pytest.raises(ConfigError, match="unknown parameter"):
        ITQ(16, n_iters=5)
    with pytest.raises(ConfigError, match="n_iter"):
        ITQ(16, n_iter=-1)
    with pytest.raises(ConfigError, match="alpha"):
        DensitySensitiveHashing(16, alpha=0)
    with pytest.raises(ConfigError, match="seed"):
        LSH(16, seed=-1)
    with pytest.raises(ConfigError, match="eps_mean"):
        SphericalHashing(16, eps_mean=2.0)
