"""attnhash: deep hashing with attention for image retrieval.

The Python API (attnhash.api) is loaded on first use, so `import attnhash` and the command line start fast:

    import attnhash
    run = attnhash.train("dpsh", dataset="fmnist", bits=64)
    print(attnhash.evaluate(run)["mAP"])
"""

from attnhash.version import __version__

# not named after a subpackage (config, evaluation, methods, ...): a submodule import would shadow it
_API = ("build_config", "train", "evaluate", "load", "build_index", "open_index", "list_methods")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from attnhash import api  # the API needs torch: imported when first used, not with the package

        return getattr(api, name)
    raise AttributeError(f"module 'attnhash' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
