"""The one plug-in mechanism: a named registry with lazy loading and a did-you-mean error.

Every kind of plug-in (methods, shallow hashers, backbones, attention modules, index backends, datasets,
protocols) is a `Registry`:

    BACKBONES = Registry("backbone", package="attnhash.models.backbones")

    @BACKBONES.register("resnet18")
    def resnet18(**kwargs): ...

    BACKBONES.get("ResNet-18")      # KeyError-free lookup; ConfigError "unknown backbone 'resnet-18' ..."

One name rule for all of them: case, "-" and "_" do not matter ("EfficientNet-Lite0" and "efficientnetlite0"
find "efficientnet_lite0", "ResNet-18" finds "resnet18", "cifar10_1" finds "cifar10-1"); `names()` lists them
as registered. Entries are loaded lazily, either by importing every public module of a package on the first
lookup (each module registers its own entries, so adding a plug-in is adding a file) or, for entries whose
import is expensive (a database client), from a "module:attribute" string resolved on first use.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from attnhash.errors import ConfigError

T = TypeVar("T")

__all__ = ["Registry", "canonical_name"]


def canonical_name(name: str) -> str:
    """The registry key of a user-written name: stripped, lower case, without "-" and "_"."""
    return str(name).strip().lower().replace("-", "").replace("_", "")


class Registry(Generic[T]):
    """Named entries of one kind of plug-in (see the module docstring)."""

    def __init__(self, kind: str, package: str | None = None, error: type[Exception] = ConfigError) -> None:
        self.kind = kind  # what an entry is, for messages: "method", "backbone", ...
        self.error = error  # raised for an unknown name (a DataError for datasets and protocols)
        self._package = package
        self._loaded = package is None
        self._entries: dict[str, T | str] = {}  # canonical key -> entry, or "module:attr" not yet imported
        self._display: dict[str, str] = {}  # canonical key -> the name as registered

    # ---- registration ---------------------------------------------------------------------------------
    def register(self, name: str | None = None, entry: T | str | None = None) -> Callable[[T], T] | T | str:
        """`register(name, entry)` adds an entry (or a lazy "module:attr" string); `@register(name)` decorates,
        and `@register()` decorates a class under its own `name` attribute."""
        if entry is None:
            def decorate(obj: T) -> T:
                self._add(name if name is not None else obj.name, obj)
                return obj

            return decorate
        self._add(name, entry)
        return entry

    def _add(self, name: str, entry: T | str) -> None:
        key = canonical_name(name)
        if not key:
            raise ValueError(f"a {self.kind} needs a name")
        if key in self._entries and self._entries[key] is not entry:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[key] = entry
        self._display[key] = str(name).strip()

    # ---- lookup ---------------------------------------------------------------------------------------
    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # set first: the modules imported below register into this registry
        package = importlib.import_module(self._package)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self._package}.{info.name}")

    def __contains__(self, name: object) -> bool:
        self._load()
        return isinstance(name, str) and canonical_name(name) in self._entries

    def get(self, name: str) -> T:
        """The entry registered under `name`; ConfigError naming the closest known names otherwise."""
        self._load()
        key = canonical_name(name)
        if key not in self._entries:
            raise self.error(self.unknown_message(name))
        entry = self._entries[key]
        if isinstance(entry, str):  # lazy "module:attribute"
            module, attr = entry.split(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[key] = entry
        return entry

    def unknown_message(self, name: str) -> str:
        known = self.names()
        close = difflib.get_close_matches(canonical_name(name), [canonical_name(n) for n in known], n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(self._display[c]) for c in close)}?" if close else ""
        return f"unknown {self.kind} {str(name)!r}; known: {', '.join(known) or 'none'}{hint}"

    def canonical(self, name: str) -> str:
        """The name as registered (ConfigError when unknown): what configs and files should record."""
        self.get(name)
        return self._display[canonical_name(name)]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._display.values())

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<Registry of {self.kind}: {', '.join(self.names())}>"
