"""The model card and the training-state summary of a trained model (``best/``).

:func:`write_model_card` writes, into a run's ``best/`` directory:

- ``README.md``: a Hugging Face model card. YAML front matter (``base_model``, ``library_name``,
  ``language``, ``tags``, ``pipeline_tag``) and sections for the base model, the method and its
  hyperparameters, the training data, the validation metrics, and the evaluation results when
  they are known (:func:`add_eval_results` adds them later and writes the card again);
- ``trainer_state.json``: a summary in the shape of transformers' ``trainer_state.json``
  (``global_step``, ``max_steps``, ``num_train_epochs``, ``train_batch_size``, ``best_metric``,
  ``best_global_step``, ``best_model_checkpoint``, ``log_history`` with ``loss``,
  ``learning_rate``, ``grad_norm``, ``eval_loss``, ... per logged step from ``log.jsonl``), plus
  a ``clo`` section with everything the card is made of, so that it can be written again.

The inputs come from the trainer (``metrics``, the config) or, where those are not given, from
the run directory: ``result.json`` (the metrics) and ``run.json`` (model, language, training
settings, data digests). A card can thus be written for any finished run after the fact.

Both files are written to be published (``clo push``): the card's metadata is made with
``huggingface_hub``'s :class:`~huggingface_hub.ModelCardData`, ``base_model`` is the base's hub id
(:func:`base_model_id`: an offline model's original repository, the original base of an
``sft+dpo`` run) or left out, and no local path is written (:func:`scrub_local_paths`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from clo.io import atomic_write

CARD = "README.md"
STATE = "trainer_state.json"
EVAL_RESULTS = "eval_results.json"

# log.jsonl keys -> transformers' log_history names.
_LOG_NAMES = {"train/loss": "loss", "train/lr": "learning_rate", "train/grad_norm": "grad_norm",
              "val/loss": "eval_loss"}
# Training settings shown in the card, in this order (the others are in trainer_state.json).
_HYPER = ("method", "lam", "beta", "lr", "min_lr", "batch_size", "epochs", "max_length", "trainable",
          "lora_r", "lora_alpha", "nll_langs", "warmup_steps", "weight_decay", "max_grad_norm", "dtype",
          "master_weights", "seed")
_METHOD_TEXT = {
    "clo": "Cross-Lingual Optimization (CLO): λ·NLL of the responses plus (1−λ)·a DPO-style "
           "cross-lingual preference term (for each question, the answer in its language preferred over the "
           "answer in the other language), against the base model as reference",
    "sft": "supervised fine-tuning on the English and the target-language pairs",
    "sft-eng": "supervised fine-tuning on the English pairs",
    "sft-tgt": "supervised fine-tuning on the target-language pairs",
    "dpo": "DPO on cross-lingual preference pairs (each language's answer preferred for its own question)",
    "sft+dpo": "supervised fine-tuning, then DPO on cross-lingual preference pairs",
}


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str, allow_nan=True))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def log_history(log_path: Path) -> list[dict]:
    """``log.jsonl`` in transformers' ``log_history`` names; unreadable lines are skipped."""
    if not log_path.is_file():
        return []
    out = []
    for raw in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        row = {}
        for k, v in entry.items():
            if k == "step":
                continue
            name = _LOG_NAMES.get(k) or (f"eval_{k[4:]}" if k.startswith("val/") else k.split("/", 1)[-1])
            row[name] = v
        row["step"] = entry.get("step")
        out.append(row)
    return out


def is_local_path(value) -> bool:
    """Whether ``value`` is an absolute local path (``/home/me/x``, ``~/x``, ``C:\\x``): machine
    details that a published file must not carry."""
    if not isinstance(value, str) or not value or "://" in value:
        return False
    return value.startswith(("/", "~")) or (len(value) > 2 and value[1] == ":" and value[2] in "\\/")


def scrub_local_paths(obj):
    """``obj`` without the absolute local paths in it: dict entries and list items holding one
    are left out (a path names nothing on another machine)."""
    if isinstance(obj, dict):
        return {k: scrub_local_paths(v) for k, v in obj.items() if not is_local_path(v)}
    if isinstance(obj, list):
        return [scrub_local_paths(v) for v in obj if not is_local_path(v)]
    return obj


def base_model_id(spec: str | None) -> str | None:
    """The hub id a model card names as ``base_model``, or None where there is none to name.

    A hub id is itself; an offline name is the repository of its original weights; a directory
    that clo trained (its ``trainer_state.json`` names a base) is that base's, so that the
    ``dpo`` stage of ``sft+dpo`` names the original model, not ``<out>/sft/best``; a snapshot in
    the hub cache (``.../models--org--name/snapshots/<commit>``) is ``org/name``; any other local
    directory is None (a local path is no base_model)."""
    from clo.models import OFFLINE_MODELS, cache_root, is_hub_id

    if not spec:
        return None
    spec = str(spec)
    if spec in OFFLINE_MODELS:
        return OFFLINE_MODELS[spec].hub_id
    path = Path(spec).expanduser()
    if path.is_dir():
        state = _read_json(path / STATE)
        if isinstance(state, dict) and isinstance(state.get("clo"), dict) and "base_model" in state["clo"]:
            base = state["clo"]["base_model"]
            return base if isinstance(base, str) and is_hub_id(base) else None
        resolved = path.resolve()
        for part in (resolved, *resolved.parents):
            if part.name.startswith("models--") and part.name.count("--") >= 2:
                return "/".join(part.name.split("--")[1:3])
        for name, entry in OFFLINE_MODELS.items():
            if resolved == (cache_root() / "models" / name).resolve():
                return entry.hub_id
        return None
    return spec if not is_local_path(spec) and is_hub_id(spec) else None


def run_settings(cfg, run: dict | None) -> dict:
    """(model spec, language, training settings) from the config, else from ``run.json``."""
    if cfg is not None:
        return {"model": cfg.model, "lang": cfg.lang, "train": cfg.train.model_dump(mode="json"),
                "data": None}
    inputs = (run or {}).get("inputs") or {}
    model = inputs.get("model") or {}
    spec = (model.get("spec") or model.get("hub")) if isinstance(model, dict) else model
    return {"model": spec, "lang": inputs.get("lang"),
            "train": inputs.get("train") or {}, "data": inputs.get("data")}


def trainer_state(best_dir: Path, metrics: dict, settings: dict, log_history: list[dict]) -> dict:
    """The ``trainer_state.json`` of ``best_dir``; no local path in it (the checkpoint is named
    relative to the run directory, the base model by :func:`base_model_id`)."""
    t = scrub_local_paths(_jsonable(settings["train"] or {}))
    return _jsonable({
        "best_metric": metrics.get("best_val_loss"),
        "best_global_step": metrics.get("best_step"),
        "best_model_checkpoint": Path(best_dir).name,
        "global_step": metrics.get("steps"),
        "max_steps": metrics.get("total_steps"),
        "num_train_epochs": t.get("epochs"),
        "train_batch_size": t.get("batch_size"),
        "log_history": log_history,
        "is_world_process_zero": True,
        "clo": {"base_model": base_model_id(settings["model"]), "lang": settings["lang"], "train": t,
                "data": scrub_local_paths(_jsonable(settings["data"])),
                "metrics": scrub_local_paths(_jsonable(metrics))},
    })


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return "–" if v is None else str(v)


def render_card(state: dict, eval_results: dict | None = None) -> str:
    """The README.md of a model from its ``trainer_state.json`` (and evaluation results)."""
    from clo import languages

    c = state["clo"]
    t, m = c.get("train") or {}, c.get("metrics") or {}
    method, base, code = t.get("method") or m.get("method"), c.get("base_model"), c.get("lang")
    try:
        lang = languages.get(code)
        lang_name, lang_codes = f"{lang.name} ({lang.code})", sorted({"en", lang.code.split("-")[0]})
    except (KeyError, AttributeError):
        lang_name, lang_codes = str(code), ["en"] + ([str(code)] if code else [])
    from huggingface_hub import ModelCard, ModelCardData

    # A model trained from a local directory has no hub base: only a hub id is a base_model.
    base = base_model_id(base) if isinstance(base, str) else None
    data_card = ModelCardData(base_model=base, library_name="transformers", pipeline_tag="text-generation",
                              language=lang_codes, tags=list(dict.fromkeys(["clo", "cross-lingual", str(method)])))
    base_text = f"[`{base}`](https://huggingface.co/{base})" if base else "a local model"
    lines = [f"# {base or 'A model'}, {method} for {lang_name}", "",
             (f"Fine-tuned with clo, {_METHOD_TEXT.get(method, method)}, to answer in "
              f"{lang_name} while keeping its English."), "",
             "## Training", "", "| | |", "|---|---|",
             f"| base model | {base_text} |", f"| method | `{method}` |", f"| target language | {lang_name} |"]
    data = c.get("data") or {}
    if data.get("train"):
        lines.append(f"| training data | sha256 `{data['train']}` ({_fmt(m.get('examples'))} examples) |")
    elif m.get("examples") is not None:
        lines.append(f"| training examples | {m['examples']} |")
    if data.get("val"):
        lines.append(f"| validation data | sha256 `{data['val']}` |")
    lines += [f"| steps | {_fmt(m.get('steps'))} of {_fmt(m.get('total_steps'))} |",
              f"| trainable | {t.get('trainable')} ({_fmt(m.get('trainable_params'))} parameters) |"]
    if t.get("trainable") == "lora":
        lines.append("| adapter | the PEFT adapter is in `adapter/`; this directory holds the merged model |")
    lines += ["", "### Hyperparameters", "", "| setting | value |", "|---|---|"]
    lines += [f"| `{k}` | {_fmt(t[k])} |" for k in _HYPER if k in t]
    lines += ["", "## Validation", "", "| metric | value |", "|---|---|",
              f"| best validation loss | {_fmt(m.get('best_val_loss'))} (step {_fmt(m.get('best_step'))}) |",
              f"| final validation loss | {_fmt(m.get('final_val_loss'))} |",
              f"| final training loss | {_fmt(m.get('train_loss'))} |"]
    vm = m.get("val_metrics") or {}
    lines += [f"| {k} | {_fmt(v)} |" for k, v in vm.items() if k != "val/loss" and not isinstance(v, dict)]
    lines += ["", "## Evaluation", ""]
    if eval_results:
        lines += ["| task | language | metric | value |", "|---|---|---|---|"]
        for key, res in sorted(eval_results.items()):
            task, _, lg = key.partition(":")
            for k, v in (res.items() if isinstance(res, dict) else [("score", res)]):
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    lines.append(f"| {task} | {lg or code} | {k} | {_fmt(v)} |")
    else:
        lines.append("Not evaluated yet (`clo eval` results are added here by "
                     "`clo.train.card.add_eval_results`).")
    lines += ["", "## Use", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              'tok = AutoTokenizer.from_pretrained("PATH_OR_REPO")',
              'model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO")', "```", "",
              "Prompts are formatted with the tokenizer's chat template (one user turn), as in training.", ""]
    return str(ModelCard(f"---\n{data_card.to_yaml()}\n---\n\n" + "\n".join(lines)))


def write_model_card(best_dir: str | Path, metrics: dict | None = None, cfg=None, *,
                     eval_results: dict | None = None) -> Path:
    """Write ``README.md`` and ``trainer_state.json`` into ``best_dir`` (module docstring).

    ``metrics``: the trainer's result metrics (default: ``../result.json``); ``cfg``: the run's
    config (default: ``../run.json``'s inputs); ``eval_results``: ``{"task:lang": {metric: value}}``
    (default: ``eval_results.json`` in ``best_dir`` when there is one). Returns the card's path.
    """
    best_dir = Path(best_dir)
    run_dir = best_dir.parent
    if metrics is None:
        metrics = ((_read_json(run_dir / "result.json") or {}).get("metrics")) or {}
    settings = run_settings(cfg, _read_json(run_dir / "run.json"))
    if settings["data"] is None:
        settings["data"] = ((_read_json(run_dir / "run.json") or {}).get("inputs") or {}).get("data")
    state = trainer_state(best_dir, metrics, settings, log_history(run_dir / "log.jsonl"))
    if eval_results is None:
        eval_results = _read_json(best_dir / EVAL_RESULTS)
    best_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(best_dir / STATE, json.dumps(state, indent=1, ensure_ascii=False, allow_nan=True) + "\n")
    atomic_write(best_dir / CARD, render_card(state, eval_results))
    return best_dir / CARD


def add_eval_results(best_dir: str | Path, task: str, lang: str, result: dict) -> Path:
    """Record an evaluation result (``{metric: value}``) in ``best_dir/eval_results.json`` and write
    the card again from ``trainer_state.json`` (a card is written first when there is none)."""
    best_dir = Path(best_dir)
    results = _read_json(best_dir / EVAL_RESULTS) or {}
    scalars = {k: v for k, v in result.items() if not isinstance(v, (list, dict))}
    results[f"{task}:{lang}"] = _jsonable(scalars)
    atomic_write(best_dir / EVAL_RESULTS, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    state = _read_json(best_dir / STATE)
    if not isinstance(state, dict) or "clo" not in state:
        return write_model_card(best_dir, eval_results=results)
    atomic_write(best_dir / CARD, render_card(state, results))
    return best_dir / CARD
