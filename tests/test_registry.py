"""Registry: the one plug-in mechanism (register, get with a did-you-mean, names, lazy loading, one name rule)."""

import pytest

from attnhash.data import DATASETS, PROTOCOLS
from attnhash.errors import ConfigError, DataError
from attnhash.index import BACKENDS
from attnhash.methods import METHODS
from attnhash.models.attention import ATTENTION
from attnhash.models.backbones import BACKBONES
from attnhash.registry import Registry, canonical_name
from attnhash.shallow import HASHERS


def test_register_get_and_the_name_rule():
    reg = Registry("widget")
    reg.register("fast-widget", 1)

    @reg.register("Slow_Widget")
    def slow():
        return 2

    @reg.register()
    class Named:
        name = "named"

    assert reg.get("fast_widget") == 1 and reg.get("FASTWIDGET") == 1 and reg.get("slow-widget") is slow
    assert reg.get("named") is Named
    assert reg.names() == ["Slow_Widget", "fast-widget", "named"] and list(reg) == reg.names()
    assert "Fast-Widget" in reg and "other" not in reg and 3 not in reg
    assert reg.canonical("slowwidget") == "Slow_Widget"
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("FAST_WIDGET", 3)
    assert canonical_name(" EfficientNet-Lite0 ") == canonical_name("efficientnet_lite0")


def test_unknown_names_get_a_did_you_mean_and_the_known_list():
    reg = Registry("widget")
    for n in ("alpha", "beta", "gamma"):
        reg.register(n, n)
    with pytest.raises(ConfigError, match=r"^unknown widget 'betta'; known: alpha, beta, gamma; did you mean 'beta'\?$"):
        reg.get("betta")
    with pytest.raises(ConfigError, match=r"^unknown widget 'zzz'; known: alpha, beta, gamma$"):
        reg.get("zzz")
    data = Registry("dataset", error=DataError)
    with pytest.raises(DataError):
        data.get("nothing")


def test_lazy_module_attribute_entries_import_on_first_get():
    reg = Registry("thing")
    reg.register("dumps", "json:dumps")
    import json

    assert reg.get("dumps") is json.dumps
    reg.register("broken", "json:no_such_attribute")
    with pytest.raises(AttributeError):
        reg.get("broken")


def test_every_plugin_kind_uses_it():
    for registry, name in ((METHODS, "dpfah"), (HASHERS, "itq"), (BACKBONES, "resnet18"), (ATTENTION, "simam"),
                           (BACKENDS, "faiss"), (DATASETS, "fmnist"), (PROTOCOLS, "cifar10-1")):
        assert isinstance(registry, Registry) and name in registry
    assert METHODS.get("DPFAH").name == "dpfah"
    with pytest.raises(ConfigError, match="did you mean 'dpfah'"):
        METHODS.get("dpfha")
    with pytest.raises(DataError, match="did you mean .*'cifar10'"):
        PROTOCOLS.get("cifar11")
