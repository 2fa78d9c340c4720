"""The task registry, the per-item cache, and the JSON + Markdown result files.

Every task is a function ``run(ctx, **options) -> TaskResult`` registered under its name with
:func:`register_task`; :func:`evaluate` loads the model, opens the cache, runs the task and writes
``<output_dir>/<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from clo import languages
from clo.languages import Language

log = logging.getLogger(__name__)


class EvalDataError(ValueError):
    """Bad or missing evaluation data; the message names the file, line and field."""


def read_json_list(path: Path, what: str) -> list:
    """A JSON file holding a list; any other content is an :class:`EvalDataError`."""
    if not path.is_file():
        raise EvalDataError(f"{path}: no such {what} file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EvalDataError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
    if not isinstance(data, list):
        raise EvalDataError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------
# Per-item cache


class ItemCache:
    """Finished items of one evaluation, appended to a JSONL file as they complete.

    The first line holds a fingerprint of everything that determines an item's result (task,
    language, model, options, generation settings). A file with another fingerprint belongs to a
    different evaluation and is replaced, so a changed setting never mixes with old results.
    """

    def __init__(self, path: Path | None, fingerprint: str):
        self.path = path
        self.fingerprint = fingerprint
        self._items: dict[str, Any] = {}
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            head = json.loads(lines[0]) if lines else {}
            if head.get("fingerprint") == fingerprint:
                for line in lines[1:]:
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError:
                        # A run killed mid-write leaves a partial last line; that item reruns.
                        continue
                    self._items[obj["key"]] = obj["value"]
                log.info("resuming %s: %d cached items", path, len(self._items))
                return
            log.info("%s was written by a different evaluation; starting afresh", path)
        path.write_text(json.dumps({"fingerprint": fingerprint}) + "\n", encoding="utf-8")

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, default: Any = None) -> Any:
        return self._items.get(key, default)

    def put(self, key: str, value: Any) -> None:
        self._items[key] = value
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Registry


@dataclass
class TaskContext:
    """What a task runs on. The transformers model is loaded on first use of :attr:`model` and
    the generator (``eval.backend``) on first use of :attr:`generator`, so a vLLM run of a
    generative task never loads the model twice, and BELEBELE never starts vLLM."""

    tokenizer: Any
    cfg: Any  # clo.config.Config
    lang: Language
    model_name: str
    output_dir: Path
    name: str
    cache: ItemCache
    load_model: Callable[[], Any]
    spec: str | None = None  # the model spec, when the model was named by one

    @cached_property
    def model(self):
        return self.load_model()

    @cached_property
    def generator(self):
        from clo.eval.generation import make_generator

        return make_generator(self.cfg.eval.backend, spec=self.spec, load_model=lambda: self.model,
                              tokenizer=self.tokenizer, eval_cfg=self.cfg.eval, workdir=self.output_dir)

    def generator_for(self, model) -> Any:
        """A generator for a second model (spec or ``(model, tokenizer)``), e.g. a baseline.

        This context's own generator is closed first: two vLLM engines would not share a GPU."""
        from clo.eval.generation import make_generator

        self.close()
        spec, tok, load = open_model(model)
        return make_generator(self.cfg.eval.backend, spec=spec, load_model=load, tokenizer=tok,
                              eval_cfg=self.cfg.eval, workdir=self.output_dir)

    def close(self) -> None:
        gen = self.__dict__.pop("generator", None)
        if gen is not None:
            gen.close()

    @property
    def data_dir(self) -> Path | None:
        d = self.cfg.eval.data_dir
        return Path(d) if d else None


def open_model(model) -> tuple[str | None, Any, Callable[[], Any]]:
    """``(spec or None, tokenizer, load)`` for a spec string or a ``(model, tokenizer)`` tuple;
    ``load()`` returns the transformers model, loading a spec's only when called."""
    if isinstance(model, str):
        from clo.models import load_model, load_tokenizer

        return model, load_tokenizer(model), lambda: load_model(model)[0]
    mdl, tok = model
    return None, tok, lambda: mdl


@dataclass
class TaskResult:
    metrics: dict
    records: list[dict]
    data_hash: str
    markdown: str = ""  # task-specific tables appended to the summary
    extra_files: dict[str, Any] = field(default_factory=dict)  # file name -> JSON content


@dataclass(frozen=True)
class TaskSpec:
    name: str
    run: Callable[..., TaskResult]
    # Options that change which file the result goes to (e.g. belebele's template).
    output_name: Callable[[str, dict], str]
    description: str = ""


TASKS: dict[str, TaskSpec] = {}


def register_task(name: str, *, description: str = "", output_name: Callable[[str, dict], str] | None = None):
    def deco(fn: Callable[..., TaskResult]) -> Callable[..., TaskResult]:
        TASKS[name] = TaskSpec(name, fn, output_name or (lambda lang, opts: f"{name}-{lang}"), description)
        return fn

    return deco


def get_task(name: str) -> TaskSpec:
    _load_tasks()
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown evaluation task {name!r}; known: {', '.join(sorted(TASKS))}") from None


def _load_tasks() -> None:
    # The task modules register themselves on import.
    from clo.eval import alpacaeval, belebele, fidelity, mmmlu  # noqa: F401


# ---------------------------------------------------------------------------------------------
# Helpers shared by tasks


def data_hash(items: list) -> str:
    """sha256 of the evaluated items (canonical JSON), so results name exactly what they measured."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps(it, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def model_identity(model, spec: str | None) -> str:
    """A string that changes when the weights change: the spec for a loaded spec, else the
    checkpoint name plus a digest of a sample of every parameter tensor."""
    if spec is not None:
        path = Path(spec).expanduser()
        if path.is_dir():
            # A checkpoint directory can be overwritten by a new training run: name its files too.
            h = hashlib.sha256()
            for f in sorted(path.iterdir()):
                if f.is_file():
                    st = f.stat()
                    h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
            return f"{spec}@{h.hexdigest()[:16]}"
        return spec
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        h.update(name.encode())
        h.update(flat[:64].float().cpu().numpy().tobytes())
        h.update(flat[-64:].float().cpu().numpy().tobytes())
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    return f"{name}@{h.hexdigest()[:16]}"


def _describe(v: Any) -> Any:
    """A JSON-able, run-independent stand-in for a task option (a loaded model becomes its identity,
    any other object its ``name`` or type), so that the cache fingerprint survives a restart."""
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, tuple) and len(v) == 2 and hasattr(v[0], "named_parameters"):
        return model_identity(v[0], None)
    if isinstance(v, (list, tuple)):
        return [_describe(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _describe(x) for k, x in v.items()}
    return getattr(v, "name", None) or type(v).__name__


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def metrics_table(metrics: dict) -> str:
    rows = ["| metric | value |", "|---|---|"]
    for k, v in metrics.items():
        if isinstance(v, (dict, list)):
            continue
        rows.append(f"| {k} | {_fmt(v)} |")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# Entry point

# Settings that change no item's result. The backend itself stays in the fingerprint: vLLM's
# samples are not the transformers backend's.
_NOT_IN_FINGERPRINT = {
    "tasks": True, "limit": True, "batch_size": True,
    "vllm": {"gpu_memory_utilization": True, "tensor_parallel_size": True, "enforce_eager": True,
             "chunk_size": True},
}


def evaluate(task: str, model, cfg, output_dir: Path, **task_options) -> dict:
    """Run ``task`` on ``model`` (spec string or ``(model, tokenizer)``) and write its results.

    Writes ``output_dir/<name>.json`` (keys task, model, lang, config, data_hash, metrics,
    records) and ``output_dir/<name>.md``; items finished by an earlier, interrupted run with the
    same settings are read from ``output_dir/<name>.cache.jsonl``. Returns the metrics.
    ``lang=`` overrides ``cfg.lang``; ``name=`` overrides the output name; the other options are
    the task's own.
    """
    spec = get_task(task)
    options = dict(task_options)
    lang = languages.get(options.pop("lang", None) or cfg.lang)
    name = options.pop("name", None) or spec.output_name(lang.code, options)
    if "data_dir" in options:
        cfg = cfg.model_copy(deep=True)
        cfg.eval.data_dir = str(options.pop("data_dir"))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    spec_str, tok, load = open_model(model)
    # A spec names its weights; an in-memory model is named by a digest of them.
    model_name = model_identity(None if spec_str else model[0], spec_str)
    shown = {k: _describe(v) for k, v in options.items()}
    # Items are cached by id, and a different limit or batch size changes no item's result.
    keyed = {k: v for k, v in shown.items() if k not in ("limit", "batch_size")}
    fingerprint = json.dumps(
        {"task": task, "lang": lang.code, "model": model_name, "options": keyed,
         "eval": cfg.eval.model_dump(mode="json", exclude=_NOT_IN_FINGERPRINT)},
        sort_keys=True, default=str,
    )
    cache = ItemCache(output_dir / f"{name}.cache.jsonl", hashlib.sha256(fingerprint.encode()).hexdigest())
    ctx = TaskContext(tok, cfg, lang, model_name, output_dir, name, cache, load, spec_str)
    t0 = time.perf_counter()
    try:
        result = spec.run(ctx, **options)
    finally:
        ctx.close()
    seconds = time.perf_counter() - t0

    doc = {
        "task": task,
        "model": model_name,
        "lang": lang.code,
        "config": {"options": shown, **cfg.model_dump(mode="json")},
        "data_hash": result.data_hash,
        "metrics": result.metrics,
        "records": result.records,
        "seconds": round(seconds, 2),
    }
    (output_dir / f"{name}.json").write_text(
        json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )
    for fname, content in result.extra_files.items():
        (output_dir / fname).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md = [
        f"# {task} ({lang.name}, `{lang.code}`)",
        "",
        f"- model: `{model_name}`",
        f"- options: `{json.dumps(shown, ensure_ascii=False)}`",
        f"- data sha256: `{result.data_hash[:16]}`",
        f"- time: {seconds:.1f} s",
        "",
        metrics_table(result.metrics),
    ]
    if result.markdown:
        md += ["", result.markdown]
    (output_dir / f"{name}.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return result.metrics
