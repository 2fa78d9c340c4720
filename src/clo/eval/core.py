"""Running a task: the per-item cache, the task's context, and the JSON + Markdown result files.

Every task is a :class:`clo.eval.task.Task` whose run function is ``run(ctx, **options) ->
TaskResult``; :func:`evaluate` looks it up in the registry, loads the model, opens the cache, runs
it and writes ``<output_dir>/<name>.json`` and ``<name>.md``.
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
from clo.errors import CloError, located
from clo.eval.task import get_task, tasks
from clo.fingerprints import differing_keys, sha256_file
from clo.identity import loaded_model_digest, loaded_model_label, model_digest, model_identity, model_label
from clo.io import atomic_write, read_json
from clo.languages import Language
from clo.paths import safe_name

log = logging.getLogger(__name__)


class EvalDataError(CloError, ValueError):
    """Bad or missing evaluation data; the message names the file, line and field."""


class CacheMismatch(EvalDataError):
    """The evaluation cache holds items of another configuration; the message names the differing
    keys (start over with ``overwrite``, ``clo eval ... --overwrite``)."""


#: Builds an :class:`EvalDataError` at ``(path, line, reason)``, for the readers of :mod:`clo.io`.
eval_data_error = located(EvalDataError)


def read_json_list(path: Path, what: str) -> list:
    """A JSON file holding a list; any other content is an :class:`EvalDataError`."""
    if not path.is_file():
        raise EvalDataError(f"{path}: no such {what} file")
    data = read_json(path, eval_data_error)
    if not isinstance(data, list):
        raise EvalDataError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------
# Per-item cache


class ItemCache:
    """Finished items of one evaluation, appended to a JSONL file as they complete.

    The first line holds a fingerprint of everything that determines an item's result (task,
    language, model, options, generation settings, the digests of the data files read) and those
    inputs themselves. A file with another fingerprint belongs to a different evaluation: it is
    refused with :class:`CacheMismatch` naming the differing keys, so a changed setting never
    mixes with old results nor silently discards them; with ``overwrite`` it is started over.

    A run killed mid-write leaves a torn last line (or a torn header, in a file with no items):
    it is dropped with a warning and the file rewritten without it, so that later appends start
    on a line of their own; those items rerun.
    """

    def __init__(self, path: Path | None, fingerprint: str, inputs: dict, *, overwrite: bool = False):
        self.path = path
        self.fingerprint = fingerprint
        self.inputs = inputs
        self.overwrite = overwrite
        self._items: dict[str, Any] = {}
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and self._resume(path):
            return
        head = {"fingerprint": fingerprint, "inputs": inputs}
        atomic_write(path, json.dumps(head, ensure_ascii=False) + "\n")

    def _differing(self, head: dict) -> list[str]:
        old = head.get("inputs")
        # A header without its inputs cannot name them; the fingerprint is what differs.
        return (differing_keys(old, self.inputs) if isinstance(old, dict) else []) or ["(fingerprint)"]

    def _resume(self, path: Path) -> bool:
        """Read the items of a file with this fingerprint; False when the file is to be replaced."""
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()  # the newline that ends the last line
        unterminated = bool(raw) and not raw.endswith(b"\n")
        numbered = [(n, ln) for n, ln in enumerate(lines, 1) if ln.strip()]
        if not numbered:
            log.warning("%s: empty evaluation cache; starting afresh", path)
            return False
        head = _parse_json(numbered[0][1])
        if not isinstance(head, dict) or not isinstance(head.get("fingerprint"), str):
            if len(numbered) == 1:
                log.warning("%s:1: torn cache header (a run killed while starting); starting afresh", path)
                return False
            raise EvalDataError(f"{path}:1: not an evaluation cache (its first line holds no fingerprint); "
                                "delete the file, or choose another output directory")
        if head["fingerprint"] != self.fingerprint:
            keys = ", ".join(self._differing(head))
            if not self.overwrite:
                raise CacheMismatch(f"{path} holds an evaluation of another configuration (differing: {keys}); "
                                    "pass --overwrite to start over there, or choose another output directory")
            log.warning("%s: an evaluation of another configuration (differing: %s); starting over", path, keys)
            return False
        kept, dropped = [numbered[0][1]], 0
        last = numbered[-1][0]
        for n, line in numbered[1:]:
            obj = _parse_json(line)
            if not (isinstance(obj, dict) and isinstance(obj.get("key"), str) and "value" in obj):
                what = "torn last line (a run killed mid-write)" if n == last else "malformed line"
                log.warning("%s:%d: %s dropped from the evaluation cache; that item reruns", path, n, what)
                dropped += 1
                continue
            self._items[obj["key"]] = obj["value"]
            kept.append(line)
        if dropped or unterminated:
            atomic_write(path, b"".join(ln + b"\n" for ln in kept))
        log.info("resuming %s: %d cached items", path, len(self._items))
        return True

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

    def after_failure(self) -> None:
        """After a failed run: a file that holds no finished item is removed (a rerun starts as
        if the run never happened); one with finished items stays, for the rerun to resume."""
        if self.path is None or not self.path.exists():
            return
        if not self._items:
            self.path.unlink()
            return
        log.warning("%s keeps the %d items finished before the failure; rerun the same command to resume",
                    self.path, len(self._items))


def _parse_json(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:  # malformed JSON, or bytes cut inside a UTF-8 character
        return None


# ---------------------------------------------------------------------------------------------
# What a task runs on


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
        from clo.eval.generation import make_generator, resolve_backend

        load = lambda: self.model  # noqa: E731
        if resolve_backend(self.cfg.eval.backend) == "vllm":
            # vLLM runs its own copy of the weights: the transformers model this context loaded
            # is dropped (reloaded if a task asks for it again), not kept on the GPU beside the engine.
            self.__dict__.pop("model", None)
            load = self.load_model
        return make_generator(self.cfg.eval.backend, spec=self.spec, load_model=load,
                              tokenizer=self.tokenizer, eval_cfg=self.cfg.eval, workdir=self.output_dir)

    def generator_for(self, model) -> Any:
        """A generator for a second model (spec or ``(model, tokenizer)``), e.g. a baseline.

        This context's own generator is closed first: two vLLM engines would not share a GPU."""
        from clo.eval.generation import make_generator

        self.close()
        from clo.eval.generation import resolve_backend

        if resolve_backend(self.cfg.eval.backend) == "vllm":
            self.__dict__.pop("model", None)  # as in :attr:`generator`
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


# ---------------------------------------------------------------------------------------------
# Helpers shared by tasks


def data_hash(items: list) -> str:
    """sha256 of the evaluated items (canonical JSON), so results name exactly what they measured."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps(it, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _describe(v: Any) -> Any:
    """A JSON-able, run-independent stand-in for a task option (a loaded model becomes its identity,
    any other object its ``name`` or type), so that the cache fingerprint survives a restart."""
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, tuple) and len(v) == 2 and hasattr(v[0], "named_parameters"):
        return loaded_model_label(v[0])
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


def _strict_json(v: Any) -> Any:
    """``v`` with NaN and infinities as None: they are not JSON, and strict parsers reject a file
    holding them. A task says why a metric is missing (its ``reason``); this is the safety net."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _strict_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict_json(x) for x in v]
    return v


# ---------------------------------------------------------------------------------------------
# Entry point

#: The ``eval`` settings that change no item's result, left out of every task's fingerprint (as a
#: pydantic ``exclude`` tree); the grid leaves them out of its evaluation markers too. The backend
#: itself stays in (``auto`` as what it resolved to): vLLM's samples are not the transformers backend's.
NOT_IN_FINGERPRINT = {
    "tasks": True, "limit": True, "batch_size": True, "batch_tokens": True,
    "vllm": {"gpu_memory_utilization": True, "tensor_parallel_size": True, "enforce_eager": True,
             "chunk_size": True},
    "judge": {"concurrency": True, "rpm": True, "tpm": True},
}


def _fingerprinted_eval(task: str, eval_cfg) -> dict:
    """The ``eval`` settings in ``task``'s fingerprint: all but those of :data:`NOT_IN_FINGERPRINT`
    and those only other tasks read (their :attr:`~clo.eval.task.Task.settings`)."""
    own = set(get_task(task).settings)
    others = {k for t in tasks() for k in t.settings} - own
    return eval_cfg.model_dump(mode="json", exclude={**NOT_IN_FINGERPRINT, **dict.fromkeys(others, True)})


# Task options that override the ``eval`` setting of the same name, and obey its constraints.
SHARED_OPTIONS = ("limit", "batch_size", "max_new_tokens", "temperature", "top_p")


def validate_options(eval_cfg, options: dict, label: Callable[[str], str] = str) -> None:
    """Check the task options of :data:`SHARED_OPTIONS` against the constraints of the ``eval``
    setting they override, so that ``limit=-3`` is refused as ``eval.limit: -3`` would be;
    ``label`` names an option in the :class:`~clo.config_base.ConfigError` (the CLI passes its
    flag)."""
    from pydantic import ValidationError

    from clo.config_base import ConfigError

    probe = eval_cfg.model_copy()
    errors = []
    for k, v in options.items():
        if k not in SHARED_OPTIONS or v is None:
            continue
        try:
            setattr(probe, k, v)  # validated on assignment
        except ValidationError as e:
            errors.append(f"{label(k)}: {e.errors()[0]['msg']}, got {v!r}")
    if errors:
        raise ConfigError("\n".join(errors))


def _file_digest(path: Path) -> str:
    return sha256_file(path)[:16]


def data_digests(task: str, lang: Language, data_dir: Path | None, options: dict) -> dict:
    """``{name: sha256[:16]}`` of the data files a run of ``task`` reads: its files under the data
    directory (named relative to it) and every option naming a file (named by the option); for
    an option naming a directory (a baseline model), a digest of its files' names, sizes and times."""
    out = {}
    for f in get_task(task).files(lang, data_dir, options):
        if f.is_file():
            out[f.relative_to(data_dir).as_posix()] = _file_digest(f)
    for k, v in sorted(options.items()):
        if isinstance(v, (str, Path)) and str(v):
            p = Path(v).expanduser()
            if p.is_file():
                out[k] = _file_digest(p)
            elif p.is_dir():
                out[k] = model_digest(str(v))
    return out


def prompt_texts(task: str, lang: Language, cfg) -> dict | None:
    """The language's prompt texts that ``task`` renders (None: it renders none of them)."""
    if task == "mmmlu":
        return {"instruction": lang.mmmlu_instruction, "answer_word": lang.answer_word}
    if task == "belebele":
        b = lang.belebele
        return {"passage": b.passage, "question": b.question, "options": list(b.options), "answer": b.answer}
    if task in ("alpacaeval", "alpacaeval-outputs") and getattr(cfg.eval, "system_prompt", "none") != "none":
        return {"system": lang.answer_in_language}
    return None


def evaluate(task: str, model, cfg, output_dir: Path, *, overwrite: bool = False, **task_options) -> dict:
    """Run ``task`` on ``model`` (spec string or ``(model, tokenizer)``) and write its results.

    Writes ``output_dir/<name>.json`` (keys task, model, lang, config, fingerprint, data_hash,
    metrics, records) and ``output_dir/<name>.md``; items finished by an earlier, interrupted run
    with the same settings are read from ``output_dir/<name>.cache.jsonl``. A cache of other
    settings raises :class:`CacheMismatch` naming the differing keys, unless ``overwrite`` (then
    it is started over). Returns the metrics. ``lang=`` overrides ``cfg.lang``; ``name=``
    overrides the output name; the other options are the task's own.
    """
    spec = get_task(task)
    options = dict(task_options)
    lang_code = options.pop("lang", None)
    lang = languages.get(lang_code if lang_code is not None else cfg.lang)
    name = options.pop("name", None)
    # The output's file name: a name from a config (a grid job's opts.name) must not reach outside output_dir.
    name = safe_name(name if name is not None else spec.output_name(lang.code, options), "evaluation output name")
    if "data_dir" in options:
        cfg = cfg.model_copy(deep=True)
        cfg.eval.data_dir = str(options.pop("data_dir"))
    validate_options(cfg.eval, options)
    from clo.eval.generation import resolve_backend

    backend = resolve_backend(cfg.eval.backend)
    if backend != cfg.eval.backend:
        # ``auto`` is recorded as what it chose, in the result's config and the cache fingerprint.
        cfg = cfg.model_copy(deep=True)
        cfg.eval.backend = backend
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    spec_str, tok, load = open_model(model)
    # Results name the model by its spec (with a digest of its content); the cache knows it by
    # its identity alone (clo.identity), so a moved checkpoint keeps its items and a swapped one
    # does not. An in-memory model is a digest of its weights.
    if spec_str:
        model_name, model_id = model_label(spec_str), model_identity(spec_str)
    else:
        model_name, model_id = loaded_model_label(model[0]), {"weights": loaded_model_digest(model[0])}
    shown = {k: _describe(v) for k, v in options.items()}
    # Items are cached by id, and a different limit or batch size changes no item's result.
    keyed = {k: v for k, v in shown.items() if k not in ("limit", "batch_size")}
    data_dir = Path(cfg.eval.data_dir) if cfg.eval.data_dir else None
    texts = prompt_texts(task, lang, cfg)
    inputs = json.loads(json.dumps(
        {"task": task, "lang": lang.code, "model": model_id, "opts": keyed,
         "eval": _fingerprinted_eval(task, cfg.eval),
         # The language's prompt texts a task renders (a language file may override them, e.g.
         # with the paper's Table 6 instructions): answers to another text are not these answers.
         **({"prompts": texts} if texts else {}),
         "data": data_digests(task, lang, data_dir, options),
         # Samples are drawn per item (clo.eval.generation.request_seed); caches of the earlier
         # per-batch seeding hold other samples.
         "seeding": "per-item"},
        default=str,
    ))
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    cache = ItemCache(output_dir / f"{name}.cache.jsonl", key, inputs, overwrite=overwrite)
    ctx = TaskContext(tok, cfg, lang, model_name, output_dir, name, cache, load, spec_str)
    t0 = time.perf_counter()
    try:
        result = spec.run(ctx, **options)
    except BaseException:
        cache.after_failure()
        raise
    finally:
        ctx.close()
    seconds = time.perf_counter() - t0

    doc = {
        "task": task,
        "model": model_name,
        "lang": lang.code,
        "config": {"options": shown, **cfg.model_dump(mode="json")},
        # The cache key and what it is made of: two results with the same key measured the same.
        "fingerprint": {"key": key, "inputs": inputs},
        "data_hash": result.data_hash,
        "metrics": result.metrics,
        "records": result.records,
        "seconds": round(seconds, 2),
    }
    doc = _strict_json(doc)
    (output_dir / f"{name}.json").write_text(
        json.dumps(doc, indent=2, ensure_ascii=False, default=str, allow_nan=False) + "\n", encoding="utf-8"
    )
    for fname, content in result.extra_files.items():
        (output_dir / fname).write_text(
            json.dumps(_strict_json(content), indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
        )
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
    return doc["metrics"]
