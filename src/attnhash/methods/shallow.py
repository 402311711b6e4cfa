"""The shallow hashers (attnhash.shallow: LSH, ITQ, SH, ...) as methods of the catalogue.

They are fitted on pretrained backbone features instead of trained (attnhash.training.shallow); a new
hasher registered in attnhash.shallow appears here by itself.
"""

from __future__ import annotations

from attnhash.methods.base import METHODS, SHALLOW, MethodEntry
from attnhash.shallow import HASHERS

for _name, _hasher in HASHERS.items():
    _doc = (_hasher.__doc__ or "").strip()
    METHODS.register(_name, MethodEntry(_name, SHALLOW, _hasher, getattr(_hasher, "paper", ""),
                                        _doc.splitlines()[0] if _doc else ""))
