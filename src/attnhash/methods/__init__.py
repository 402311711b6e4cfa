"""Hashing methods, one file each, in one catalogue (METHODS). See attnhash.methods.base for what a method is."""

from attnhash.methods.base import (  # noqa: F401
    DEEP_SUPERVISED,
    DEEP_UNSUPERVISED,
    METHODS,
    SHALLOW,
    Method,
    MethodEntry,
    TrainContext,
    create_method,
    method_class,
    register_method,
)
