"""Shallow (non-deep) hashing on feature matrices: LSH, PCAH, SH, ITQ, SpH, DSH (density).

Every method has the same scikit-learn style shape (``fit`` on an (n, d) matrix, no labels; ``encode`` to
(n, bits) int8 codes in {-1, +1}; ``state_dict`` / ``from_state_dict``) and registers itself by name::

    from attnhash.shallow import create_shallow
    itq = create_shallow("itq", bits=64, seed=0).fit(train_features)
    codes = itq.encode(database_features)
"""

from attnhash.shallow.base import (
    HASHERS,
    ShallowHasher,
    create_shallow,
    load_shallow,
    register_shallow,
)
from attnhash.shallow.density_sensitive import DensitySensitiveHashing
from attnhash.shallow.itq import ITQ

# importing each method module registers it
from attnhash.shallow.lsh import LSH
from attnhash.shallow.pcah import PCAH
from attnhash.shallow.sh import SpectralHashing
from attnhash.shallow.sph import SphericalHashing

__all__ = [
    "ShallowHasher",
    "HASHERS",
    "create_shallow",
    "load_shallow",
    "register_shallow",
    "LSH",
    "PCAH",
    "SpectralHashing",
    "ITQ",
    "SphericalHashing",
    "DensitySensitiveHashing",
]
