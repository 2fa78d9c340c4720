"""clo: Cross-Lingual Optimization for language transfer in large language models."""

__version__ = "0.1.0"


def __getattr__(name):
    # `clo.train(model=..., tokenizer=..., train_dataset=...)` (clo.api.train): the clo.train
    # package is callable, imported on first use so that `import clo` stays light.
    if name in ("train", "api"):
        import importlib

        return importlib.import_module(f"clo.{name}")
    raise AttributeError(f"module 'clo' has no attribute {name!r}")
