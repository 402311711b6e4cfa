import pytest

from attnhash.config import build_config, config_from_dict, parse_override
from attnhash.errors import ConfigError


def test_layers_recipe_then_flags_then_overrides(tmp_path):
    user = tmp_path / "u.yaml"
    user.write_text("optim:\n  lr: 0.01\ntrain:\n  epochs: 3\n")
    cfg = build_config("dpsh", [str(user)], {"train": {"epochs": 7, "batch_size": None}}, ["optim.lr=1e-4"])
    assert cfg.method.name == "dpsh"
    assert cfg.method.params["eta"] == 0.1  # from the recipe
    assert cfg.train.epochs == 7  # flag beats file
    assert cfg.train.batch_size == 64  # None flags are ignored, recipe value stays
    assert cfg.optim.lr == pytest.approx(1e-4)  # --set beats everything; '1e-4' parsed as a number


def test_unknown_keys_and_bad_values_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'; did you mean 'optim.lr'\?"):
        build_config("dpsh", overrides=["optim.lrr=1"])
    with pytest.raises(ConfigError, match="model.bits must be at least 4"):
        build_config("dpsh", flags={"model": {"bits": 3}})
    assert build_config("dpsh", flags={"model": {"bits": 12}}).model.bits == 12  # 12-bit tables work
    with pytest.raises(ConfigError, match="expected an integer"):
        build_config("dpsh", overrides=["train.epochs=abc"])
    with pytest.raises(ConfigError, match="optim.name must be one of"):
        build_config("dpsh", overrides=["optim.name=lbfgs"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        build_config("dpsh", [str(bad)])
    with pytest.raises(ConfigError, match="must look like"):
        parse_override("optim.lr")


def test_saved_config_round_trip():
    cfg = build_config("dpsh", overrides=["model.bits=32", "method.ablate=[x]"])
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
