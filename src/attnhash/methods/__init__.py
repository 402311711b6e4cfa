"""Hashing methods, one file each. See attnhash.methods.base for what a method is."""

from attnhash.methods.base import (  # noqa: F401
    Method,
    TrainContext,
    available_methods,
    create_method,
    method_class,
    register_method,
)
