"""The Python API for what a TRL user has at hand: a model (object or id), a tokenizer, and a
``datasets.Dataset`` or a list of records.

    import clo
    result = clo.train(model=model, tokenizer=tokenizer, train_dataset=ds, lang="de",
                       output_dir="runs/de-clo", method="clo", epochs=1, lr=1e-4)
    result.best_checkpoint   # a directory: AutoModelForCausalLM.from_pretrained(result.best_checkpoint)

The trainer works on model directories and dataset files (that is what its fingerprints, resume
and reference cache are keyed on), so objects are written once, content-addressed, under
``$CLO_CACHE/python/``: a model object (with its tokenizer) to ``models/<digest>/`` by
``save_pretrained``, records to ``data/<digest>.jsonl``. The same model and data give the same
paths, so calling again resumes or returns the finished run; other ones are refused by the
output directory's fingerprint, as on the command line (``overwrite=True`` starts over).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from clo.errors import CloError
from clo.io import atomic_write

__all__ = ["APIError", "train"]


class APIError(CloError, ValueError):
    """A bad argument to the Python API; the message names the argument (and row)."""


def _cache(sub: str) -> Path:
    from clo.models import cache_root

    d = cache_root() / "python" / sub
    d.mkdir(parents=True, exist_ok=True)
    return d


def _digest_dir(d: Path) -> str:
    from clo.fingerprints import content_digest

    return content_digest(d)["sha256"][:20]


def model_directory(model, tokenizer=None) -> str:
    """A model spec the trainer reads: ``model`` itself when it is a spec (hub id, directory,
    offline name) and no tokenizer object replaces its own; else the model (and tokenizer) saved
    with ``save_pretrained`` to a content-addressed directory, whose path is returned."""
    if isinstance(model, (str, Path)) and (tokenizer is None or isinstance(tokenizer, (str, Path))):
        if tokenizer is not None and str(tokenizer) != str(model):
            raise APIError("tokenizer: a tokenizer id with a model id: clo reads the model's own tokenizer; pass "
                           "the tokenizer object (AutoTokenizer.from_pretrained(...)) to use another")
        return str(model)
    if isinstance(model, (str, Path)):
        from clo.models import load_model

        model, _ = load_model(str(model), dtype=None, device="cpu")
    if not hasattr(model, "save_pretrained"):
        raise APIError(f"model: expected a transformers PreTrainedModel or a model id / directory, got "
                       f"{type(model).__name__}")
    if tokenizer is None:
        raise APIError("tokenizer: required with a model object (the chat template and the special tokens "
                       "come from it): pass the tokenizer you use with the model")
    if not hasattr(tokenizer, "save_pretrained"):
        raise APIError(f"tokenizer: expected a transformers tokenizer, got {type(tokenizer).__name__}")
    if getattr(model, "peft_config", None):
        raise APIError("model: a peft model: pass its base model (clo adds LoRA itself: trainable='lora'), or "
                       "merge_and_unload() it first")
    root = _cache("models")
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        final = root / _digest_dir(tmp)
        if (final / "config.json").is_file():
            return str(final)  # the same model saved before: its path (and run fingerprint) again
        tmp.rename(final)
        return str(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _rows(dataset, what: str) -> list[dict]:
    if isinstance(dataset, (str, Path)):
        return []  # a file: read (and validated) by the trainer itself
    if hasattr(dataset, "to_list") and hasattr(dataset, "column_names"):  # datasets.Dataset
        return dataset.to_list()
    if isinstance(dataset, Mapping) or not isinstance(dataset, Iterable):
        raise APIError(f"{what}: expected a datasets.Dataset, a list of records or a file path, got "
                       f"{type(dataset).__name__}")
    rows = list(dataset)
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise APIError(f"{what}[{i}]: expected a record (a dict with x_en, y_en, x_tgt, y_tgt), got "
                           f"{type(r).__name__}")
    return [dict(r) for r in rows]


def dataset_file(dataset, what: str, lang: str | None) -> tuple[Path, str | None]:
    """(a dataset file the trainer reads, the records' target language). Records may leave out
    ``id`` (``<what>-<i>``), ``tgt_lang`` (``lang``) and ``source``; each is validated as a
    :class:`~clo.data.records.CrossLingualRecord`, errors naming ``what[i].field``."""
    from clo.data.records import CrossLingualRecord, RecordError

    if isinstance(dataset, (str, Path)):
        return Path(dataset), None
    rows = _rows(dataset, what)
    if not rows:
        raise APIError(f"{what}: no records")
    records = []
    for i, r in enumerate(rows):
        r.setdefault("id", f"{what}-{i}")
        r["id"] = str(r["id"])
        if r.get("tgt_lang") is None:
            if lang is None:
                raise APIError(f"{what}[{i}].tgt_lang: missing; give lang='xx' (the target language)")
            r["tgt_lang"] = lang
        r.setdefault("source", "python")
        try:
            records.append(CrossLingualRecord.from_dict(r, what, None))
        except RecordError as e:
            raise APIError(f"{what}[{i}].{e.field}: {e.reason}" if e.field else f"{what}[{i}]: {e.reason}") from None
    langs = sorted({r.tgt_lang for r in records})
    if len(langs) > 1:
        raise APIError(f"{what}: records of several target languages ({', '.join(langs)}): one language per run")
    text = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)
    path = _cache("data") / f"{hashlib.sha256(text.encode('utf-8')).hexdigest()[:20]}.jsonl"
    if not path.is_file():
        atomic_write(path, text)
    return path, langs[0]


def train(model, train_dataset, *, tokenizer=None, eval_dataset=None, method: str = "clo",
          lang: str | None = None, output_dir: str | Path = "runs/python", config=None,
          overrides: Iterable[str] = (), overwrite: bool = False, **train_options):
    """Train ``model`` with ``method`` (clo, sft, sft-eng, sft-tgt, dpo, sft+dpo) on parallel records.

    ``model``: a transformers ``PreTrainedModel`` or a model spec (hub id, directory, offline name);
    ``tokenizer``: its tokenizer (required with a model object); ``train_dataset`` /
    ``eval_dataset``: a ``datasets.Dataset``, a list of dicts with ``x_en, y_en, x_tgt, y_tgt``
    (``id``, ``tgt_lang``, ``source`` optional), or a dataset file; ``lang``: the target language
    (default: the records'); ``config``: a ``clo.config.Config`` or a YAML path (default: clo's
    defaults); ``overrides``: ``"key=value"`` strings as ``--set`` takes; ``train_options``: keys
    of the ``train:`` section (``epochs=1, lr=1e-4, beta=0.2, trainable="lora"``).

    Returns the :class:`~clo.train.trainer.TrainResult` (``best_checkpoint``, ``metrics``,
    ``output_dir``). Bad arguments raise :class:`APIError` (a ``ValueError``) naming them.
    """
    from clo.config import Config, config_from_dict, load_yaml

    if train_dataset is None:
        raise APIError("train_dataset: required")
    train_path, data_lang = dataset_file(train_dataset, "train_dataset", lang)
    val_path = None
    if eval_dataset is not None:
        val_path, _ = dataset_file(eval_dataset, "eval_dataset", lang or data_lang)
    if isinstance(config, Config):
        tree, source = config.model_dump(mode="json"), "config"
    elif config is not None:
        tree, source = load_yaml(config), str(config)
    else:
        tree, source = {}, "<defaults>"
    from clo.config_base import ConfigError

    ov = list(overrides)
    named = {f"train.method={json.dumps(method)}": f"method={method!r}"}  # override -> the argument it came from
    for key, value in train_options.items():
        named[f"train.{key}={json.dumps(value)}"] = f"{key}={value!r}"
    if lang or data_lang:
        named[f"lang={json.dumps(lang or data_lang)}"] = f"lang={lang or data_lang!r}"
    named[f"model={json.dumps(model_directory(model, tokenizer))}"] = "model"
    try:
        cfg = config_from_dict(tree, source, [*ov, *named])
    except ConfigError as e:
        msg = str(e)
        for flag, arg in named.items():  # errors name the keyword argument, not a --set flag
            msg = msg.replace(f"--set {flag}: ", f"{arg}: ")
        raise APIError(msg) from None
    from clo.train.trainer import train as run

    return run(cfg, train_path, val_path, Path(output_dir), overwrite=overwrite)
