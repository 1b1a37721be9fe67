"""charrnn: character-level recurrent language models on a NumPy core.

The public names are imported on first use (PEP 562), so that `charrnn --help`
starts without loading numpy.
"""

__version__ = "0.3.0.dev0"  # 0.3.0: the fixes of issue 18, docs/, charrnn tune, the GPU backend (CHANGELOG.md)

__all__ = ["CharRNN", "__version__", "one_hot", "sample"]

_LAZY = {"CharRNN": "model", "one_hot": "layers", "sample": "sampling"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'charrnn' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
