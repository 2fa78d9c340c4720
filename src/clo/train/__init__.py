"""Training: CLO and its baselines (sft, sft-eng, sft-tgt, dpo, sft+dpo).

``train(cfg, train_path, val_path, output_dir) -> TrainResult`` is the entry point; the maths is
in :mod:`clo.train.losses`, the methods in :mod:`clo.train.methods`, packed log-probs in
:mod:`clo.train.logprobs`, cached reference log-probs in :mod:`clo.train.reference`.
"""

from __future__ import annotations

import sys
import types


def train(cfg, train_path, val_path, output_dir, **kwargs):
    from clo.train.trainer import train as _train

    return _train(cfg, train_path, val_path, output_dir, **kwargs)


def __getattr__(name):
    if name in ("TrainResult", "TrainingDiverged"):
        from clo.train import trainer

        return getattr(trainer, name)
    raise AttributeError(name)


__all__ = ["TrainResult", "TrainingDiverged", "train"]


class _CallablePackage(types.ModuleType):
    """``clo.train(model=..., tokenizer=..., train_dataset=...)``: this package, called, is the
    Python API (:func:`clo.api.train`); ``clo.train.train(cfg, ...)`` stays the stages' entry point."""

    def __call__(self, *args, **kwargs):
        from clo.api import train as api_train

        return api_train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
