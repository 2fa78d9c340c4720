"""What a grid will cost before it runs: time per stage, checkpoint disk, API tokens and dollars.

Every number is sizes of the grid (examples, items, tokens per item: counted from the local files
where they are local) times a rate or a price from ``assumptions.yaml`` (shipped with clo, each
figure with its source; user-editable, see :func:`load_assumptions`). They are estimates for
planning, not measurements: the rates are those of one H200-class GPU per job.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from clo.experiments.config import GridConfig, RunSpec, expand
from clo.experiments.graph import PHASES, grid_stages, held_out_prompts, job_data_dir

log = logging.getLogger(__name__)

ASSUMPTIONS_FILE = "assumptions.yaml"


#: Sequences per example of each training method (``x_en -> y_en`` is en, ``x_tgt -> y_tgt`` tgt,
#: preference methods score all four) and whether it needs the reference model's log-probs.
METHOD_SEQUENCES = {"sft": (1, 1), "sft-eng": (1, 0), "sft-tgt": (0, 1), "dpo": (2, 2), "clo": (2, 2)}
REFERENCE_METHODS = {"dpo", "clo"}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def default_assumptions_path() -> str:
    return str(resources.files("clo.experiments").joinpath(ASSUMPTIONS_FILE))


def load_assumptions(path: str | Path | None = None) -> dict:
    """The shipped assumptions, with those of ``path`` (a YAML file of the same keys) over them."""
    base = yaml.safe_load(resources.files("clo.experiments").joinpath(ASSUMPTIONS_FILE).read_text(encoding="utf-8"))
    base["_path"] = default_assumptions_path()
    if path is None:
        return base
    from clo.config_base import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--assumptions {p}: no such file")
    user = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(user, dict):
        raise ConfigError(f"{p}: expected a mapping of the keys of {default_assumptions_path()}")
    return {**_merge(base, user), "_path": f"{p} over {base['_path']}"}


# ---------------------------------------------------------------------------------------------
# Model sizes


@dataclass(frozen=True)
class ModelSize:
    params: float
    attention: float
    source: str  # "config.json of <dir>", "assumptions: models", ...


def _num(x: Any) -> float:
    return float(x)  # YAML 1.1 reads 6.74e9 as a string


def params_from_config(cfg: dict) -> tuple[float, float]:
    """(total, attention-projection) parameters of a decoder-only transformer from its config.json
    (Llama, Qwen2, Mistral, Gemma and their kind: gated MLP, grouped-query attention)."""
    c = cfg.get("text_config") or cfg
    h = c.get("hidden_size") or c.get("d_model") or c["n_embd"]
    layers = c.get("num_hidden_layers") or c.get("n_layer") or c["num_layers"]
    heads = c.get("num_attention_heads") or c.get("n_head") or c["encoder_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or h // heads
    inter = c.get("intermediate_size") or c.get("ffn_dim") or 4 * h
    vocab = c.get("vocab_size", 32000)
    attention = layers * (2 * h * heads * head_dim + 2 * h * kv * head_dim)
    mlp = layers * 3 * h * inter
    embed = vocab * h * (1 if c.get("tie_word_embeddings", cfg.get("tie_word_embeddings", True)) else 2)
    return float(attention + mlp + embed), float(attention)


def model_size(spec: str, assumptions: dict) -> ModelSize | None:
    """Parameters of a model spec: from the local directory's config.json, else the table of
    ``assumptions["models"]``; None when neither knows it."""
    table = assumptions.get("models", {})
    path = Path(spec).expanduser()
    if (path / "config.json").is_file():
        try:
            total, attn = params_from_config(json.loads((path / "config.json").read_text(encoding="utf-8")))
            return ModelSize(total, attn, f"config.json of {path}")
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            pass
    if spec in table:
        return ModelSize(_num(table[spec]["params"]), _num(table[spec]["attention"]), "assumptions: models")
    return None


def dtype_bytes(dtype: str) -> int:
    """Bytes per weight of ``train.dtype`` (``auto``: bf16, what a GPU run loads)."""
    return 4 if dtype in ("float32", "fp32") else 2


def checkpoint_bytes(run: RunSpec, size: ModelSize) -> float:
    """Disk of one trained run: ``best/`` (every weight in ``train.dtype``; with ``train.save:
    trained`` the trained ones only) per training stage (``sft+dpo`` has two), and with
    ``train.keep_state`` its ``last/state.pt`` (the trainable tensors in fp32, their best copy,
    AdamW's two moments: 16 bytes each), which a finished run otherwise removes."""
    tc = run.config.train
    trainable = {"full": size.params, "lora": 0.01 * size.params}.get(tc.trainable, size.attention)
    stages = 2 if run.method == "sft+dpo" else 1
    state = 16 * trainable if tc.keep_state else 0
    best = trainable if tc.save == "trained" else size.params
    return stages * (best * dtype_bytes(tc.dtype) + state)


# ---------------------------------------------------------------------------------------------
# Sizes of the data


def _cpt(a: dict, lang: str) -> float:
    table = a["tokens"]["chars_per_token"]
    return float(table.get(lang, table["default"]))


@dataclass
class _Data:
    """What the estimates know of a language's dataset."""

    n: int  # English examples (data.n, or the prebuilt file's records)
    chars_per_example: float  # characters of x_en + y_en
    counted: bool  # from the files (True) or the assumptions (False)
    build: bool  # the grid translates it (False: a prebuilt dataset)


def _data_sizes(grid: GridConfig, cfg, lang: str, a: dict) -> _Data:
    dc = cfg.data
    if grid.dataset:
        path = Path(grid.dataset[lang])
        try:
            n, chars = 0, 0
            with path.open(encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        obj = json.loads(line)
                        n, chars = n + 1, chars + len(obj.get("x_en", "")) + len(obj.get("y_en", ""))
            return _Data(n, chars / max(n, 1), True, False)
        except (OSError, ValueError):
            return _Data(dc.n, a["tokens"]["english_chars_per_example"].get(dc.source, 1000), False, False)
    if dc.path:
        try:
            from clo.data.sources import load_source

            ex = load_source(dc.source, dc.path, dc.n, dc.max_chars)
            chars = sum(len(e.x_en) + len(e.y_en) for e in ex)
            return _Data(len(ex), chars / max(len(ex), 1), True, True)
        except Exception as e:  # noqa: BLE001 - the data check reports a bad source; estimate from the assumptions
            log.debug("estimate: %s not counted (%s); assumed sizes", dc.path, e)
    return _Data(dc.n, float(a["tokens"]["english_chars_per_example"].get(dc.source, 1000)), False, True)


def _instructions(cfg, job, a: dict) -> tuple[int, float]:
    """(number, total characters) of the AlpacaEval instructions a job reads (its limit applied)."""
    from clo.eval.alpacaeval import load_instructions

    limit = job.opts.get("limit", cfg.eval.limit)
    path = job.opts.get("instructions_file")
    ddir = job.opts.get("data_dir") or cfg.eval.data_dir
    ddir = Path(ddir) if ddir else None
    if path or ddir:
        try:
            rows = load_instructions(Path(path) if path else None, ddir)[:limit]
            return len(rows), float(sum(len(r["instruction"]) for r in rows))
        except Exception as e:  # noqa: BLE001 - the data check says what is missing
            log.debug("estimate: AlpacaEval instructions not counted (%s); assumed sizes", e)
    n = min(limit or 10**9, int(a["items"]["alpacaeval"]))
    return n, n * float(a["tokens"]["alpacaeval_chars_per_instruction"])


def eval_items(grid: GridConfig, run: RunSpec, job, a: dict, data: _Data) -> int:
    """How many items an evaluation job will have (its ``limit`` applied): the held-out records
    the grid's data stage will write, when the task reads them, else what the task counts."""
    from clo import languages
    from clo.eval.task import get_task

    cfg = run.config
    limit = job.opts.get("limit", cfg.eval.limit)
    if held_out_prompts(grid, run, job) is not None:  # not written yet: the validation split's size
        n = round(data.n * cfg.data.val_fraction)
        return min(n, limit) if limit else n
    lang = languages.get(job.resolve_lang(run.lang))
    return get_task(job.task).item_count(lang, job_data_dir(run, job), job.opts, limit=limit, assumed=a["items"])


# ---------------------------------------------------------------------------------------------
# The estimate


@dataclass
class StageEstimate:
    name: str
    kind: str
    phase: str  # the summary row (the stage's launcher.stages entry)
    seconds: float  # on the GPUs it gets
    gpus: int = 1
    api_in: float = 0.0  # tokens
    api_out: float = 0.0
    cost: float | None = 0.0  # USD; None: tokens of a model without a price
    api_model: str | None = None
    note: str = ""


@dataclass
class Estimate:
    stages: list[StageEstimate] = field(default_factory=list)
    done: int = 0  # stages already done (not estimated)
    disk_bytes: float = 0.0  # checkpoints still to be written
    unknown_models: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    assumptions: str = ""

    def phases(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for p in PHASES:  # the summary rows: each stage is counted in its phase's
            rows = [s for s in self.stages if s.phase == p]
            costs = [s.cost for s in rows]
            out[p] = {
                "stages": len(rows), "gpu_hours": sum(s.seconds * s.gpus for s in rows) / 3600,
                "hours": sum(s.seconds for s in rows) / 3600,
                "longest_hours": max((s.seconds for s in rows), default=0.0) / 3600,
                "api_in": sum(s.api_in for s in rows), "api_out": sum(s.api_out for s in rows),
                "cost": None if any(c is None for c in costs) else sum(costs),
                "priced": sum(c for c in costs if c is not None),
            }
        return out


def _price(a: dict, model: str, tokens_in: float, tokens_out: float) -> float | None:
    p = a.get("prices", {}).get(model)
    if p is None:
        return None
    return (tokens_in * float(p["input"]) + tokens_out * float(p["output"])) / 1e6


def _train_rate(a: dict, size: ModelSize | None) -> float:
    """Training tokens per second on one GPU for a model of this size."""
    params = size.params if size else 8e9
    return float(a["rates"]["train_tokens_per_s_8b"]) * 8e9 / params


def _backend(cfg) -> str:
    """The generation backend a run will use: ``auto`` is vLLM where it is installed (here)."""
    backend = cfg.eval.backend
    if backend == "auto":
        import importlib.util

        return "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    return backend


def _max_new_tokens(cfg, opts: dict, task: str | None = None) -> int:
    if opts.get("max_new_tokens"):
        return int(opts["max_new_tokens"])
    if task == "mmmlu" and getattr(cfg.eval, "mmmlu_max_new_tokens", None):
        return int(cfg.eval.mmmlu_max_new_tokens)
    return int(cfg.eval.max_new_tokens)


def _generation_seconds(a: dict, cfg, opts: dict, n: int, task: str | None = None) -> float:
    max_new = _max_new_tokens(cfg, opts, task)
    r = a["rates"]
    if _backend(cfg) == "vllm":
        return n * min(max_new, int(a["tokens"]["answer_tokens"])) / float(r["vllm_tokens_per_s"])
    bs = int(opts.get("batch_size") or cfg.eval.batch_size or r["generation_batch_size"])
    steps = math.ceil(n / bs) * min(max_new, int(r["generation_batch_tokens"]))
    return steps / float(r["generation_steps_per_s"])


def _judge_requests_per_s(a: dict, judge, tokens_per_request: float) -> float:
    """Judge requests per second: those in flight (``judge.concurrency``) over the assumed time of
    one, capped by ``judge.rpm`` and ``judge.tpm`` where the config sets them."""
    rate = float(getattr(judge, "concurrency", 1) or 1) / float(a["rates"]["judge_seconds_per_request"])
    if getattr(judge, "rpm", None):
        rate = min(rate, judge.rpm / 60)
    if getattr(judge, "tpm", None) and tokens_per_request > 0:
        rate = min(rate, judge.tpm / 60 / tokens_per_request)
    return rate


def _translation(a: dict, tcfg, chars: float, texts: int, lang: str) -> tuple[float, float, float]:
    """(seconds, API input tokens, API output tokens) of translating ``chars`` English characters
    in ``texts`` texts into ``lang``."""
    src = chars / _cpt(a, "en")
    out = src * float(a["tokens"]["target_ratio"])
    rates = a["rates"]
    if tcfg.kind == "identity":
        return 0.0, 0.0, 0.0
    if tcfg.kind == "openai":
        requests = texts + src / tcfg.max_segment_tokens
        rate = tcfg.concurrency * float(rates["openai_tokens_per_s_per_request"])
        return out / rate, src + requests * float(a["tokens"]["translation_prompt_tokens"]), out
    rate = float(rates["translation_tokens_per_s"].get(tcfg.kind, rates["translation_tokens_per_s"]["causal"]))
    return out / rate, 0.0, 0.0


def _translator_cost(a: dict, tcfg, tokens_in: float, tokens_out: float) -> tuple[float | None, str | None]:
    """(USD or None when unpriced, API model) of an API translator's tokens; a self-hosted
    endpoint (``base_url``) and a local translator cost nothing."""
    if tcfg.kind != "openai":
        return 0.0, None
    return (0.0 if tcfg.base_url else _price(a, tcfg.model, tokens_in, tokens_out)), tcfg.model


def _judge_tokens(a: dict, cfg, opts: dict, lang: str, n: int, instr_chars: float) -> tuple[float, float]:
    from clo.eval.judge import LANGUAGE_RULE, SYSTEM_PROMPT, USER_TEMPLATE

    t = a["tokens"]
    fixed = (len(SYSTEM_PROMPT) + len(USER_TEMPLATE) + (len(LANGUAGE_RULE) if lang != "en" else 0)) / _cpt(a, "en")
    answers = 2 * min(_max_new_tokens(cfg, opts), int(t["answer_tokens"]))
    per = 1 + float(t["judge_retry_rate"])
    tokens_in = per * (n * (fixed + answers) + instr_chars / _cpt(a, lang))
    return tokens_in, per * n * float(t["judge_output_tokens"])


def estimate_grid(grid: GridConfig, assumptions: dict, *, done: set[str] | frozenset[str] = frozenset(),
                  gpus: dict[str, int] | None = None, runs: list[RunSpec] | None = None) -> Estimate:
    """The estimate of every stage of ``grid`` not in ``done`` (stage names). ``gpus``: GPUs per
    job of each phase (``launcher.stages``); training time is divided by them."""
    a = assumptions
    runs = expand(grid) if runs is None else runs
    gpus = gpus or {}
    est = Estimate(assumptions=a.get("_path", ""))
    sizes: dict[str, ModelSize | None] = {}
    data: dict[str, _Data] = {}
    for lang in grid.langs:
        cfg = next(r.config for r in runs if r.lang == lang)
        data[lang] = _data_sizes(grid, cfg, lang, a)
    for r in runs:
        if r.model_spec not in sizes:
            sizes[r.model_spec] = model_size(r.model_spec, a)
            if sizes[r.model_spec] is None:
                est.unknown_models.append(r.model_spec)
    loaded: set[tuple[str, str]] = set()  # (run id, phase): a job loads its model once
    for ref in grid_stages(grid, runs):
        if ref.name in done:
            est.done += 1
            continue
        run = ref.run
        if ref.kind == "data":
            d = data[ref.lang]
            cfg = next(r.config for r in runs if r.lang == ref.lang)
            if not d.build:
                est.stages.append(StageEstimate(ref.name, ref.kind, ref.phase, 5.0, 0, note="prebuilt dataset"))
                continue
            secs, tin, tout = _translation(a, cfg.data.translator, d.n * d.chars_per_example, 2 * d.n, ref.lang)
            est.stages.append(StageEstimate(
                ref.name, ref.kind, ref.phase, secs, 1, tin, tout, *_translator_cost(a, cfg.data.translator, tin, tout),
                f"{d.n} examples, {d.chars_per_example:.0f} chars each"
                + ("" if d.counted else " (assumed)") + f", translator {cfg.data.translator.kind}"))
        elif ref.kind == "instructions":
            cfg = next(r.config for r in runs if ref.job.resolve_lang(r.lang) == ref.lang)
            n, chars = _instructions(cfg, ref.job, a)
            tr = cfg.eval.translator or cfg.data.translator  # the evaluation sets' translator
            secs, tin, tout = _translation(a, tr, chars, n, ref.lang)
            est.stages.append(StageEstimate(ref.name, ref.kind, ref.phase, secs, 1, tin, tout,
                                            *_translator_cost(a, tr, tin, tout),
                                            f"{n} AlpacaEval instructions"))
        elif ref.kind == "train":
            cfg = run.config
            d = data[run.lang]
            n_train = run.size if run.size is not None else round(d.n * (1 - cfg.data.val_fraction))
            t_en = d.chars_per_example / _cpt(a, "en")
            t_tgt = t_en * float(a["tokens"]["target_ratio"])
            tokens = 0.0
            for m in (("sft", "dpo") if run.method == "sft+dpo" else (run.method,)):
                n_en, n_tgt = METHOD_SEQUENCES.get(m, (1, 1))
                per = n_en * t_en + n_tgt * t_tgt
                tokens += n_train * cfg.train.epochs * per
                if m in REFERENCE_METHODS:
                    tokens += n_train * per * float(a["rates"]["reference_cost"])
            if cfg.train.trainable == "full":
                tokens *= float(a["rates"]["full_parameter_factor"])
            g = max(1, gpus.get("train", 1))
            secs = tokens / (_train_rate(a, sizes[run.model_spec]) * g)
            size = sizes[run.model_spec]
            if size is not None:
                est.disk_bytes += checkpoint_bytes(run, size)
            est.stages.append(StageEstimate(ref.name, ref.kind, ref.phase, secs, g,
                                            note=f"{n_train} examples x {cfg.train.epochs} epoch(s)"))
        elif ref.kind in ("eval", "samples", "pairwise", "baseline-outputs"):
            cfg = run.config
            phase = ref.phase
            secs = 0.0
            if (run.run_id, phase) not in loaded:
                loaded.add((run.run_id, phase))
                secs += float(a["rates"]["model_load_s"])
            st = StageEstimate(ref.name, ref.kind, ref.phase, 0.0, 1)
            if ref.kind == "samples":
                secs += _generation_seconds(a, cfg, {}, len(grid.samples))
            else:
                job = ref.job
                n = eval_items(grid, run, job, a, data[run.lang])
                st.note = f"{n} items"
                if job.task == "belebele":
                    secs += n * float(a["items"]["belebele_tokens"]) / (
                        _train_rate(a, sizes[run.model_spec]) * float(a["rates"]["score_speedup"]))
                elif ref.kind == "pairwise" and job.task == "alpacaeval":
                    secs += _generation_seconds(a, cfg, job.opts, n)
                    _, chars = _instructions(cfg, job, a)
                    st.api_in, st.api_out = _judge_tokens(a, cfg, job.opts, ref.lang, n, chars)
                    judge = cfg.eval.judge
                    per = 1 + float(a["tokens"]["judge_retry_rate"])
                    if judge.backend == "openai":
                        requests = per * n
                        tokens = (st.api_in + st.api_out) / requests if requests else 0.0
                        secs += requests / _judge_requests_per_s(a, judge, tokens)
                        st.api_model = judge.model
                        st.cost = 0.0 if judge.base_url else _price(a, judge.model, st.api_in, st.api_out)
                    else:  # a local judge: its tokens are generation on the GPU, not an API bill
                        secs += per * n * float(a["tokens"]["judge_output_tokens"]) / float(
                            a["rates"]["generation_steps_per_s"])
                        st.api_in = st.api_out = 0.0
                else:
                    secs += _generation_seconds(a, cfg, job.opts, n, job.task)
            st.seconds = secs
            est.stages.append(st)
        elif ref.kind == "report":
            est.stages.append(StageEstimate(ref.name, ref.kind, ref.phase, 10.0, 0))
    if est.unknown_models:
        est.notes.append("no size known for " + ", ".join(sorted(set(est.unknown_models)))
                         + " (no local config.json, not in the assumptions' models table): timed as 8B, "
                           "no checkpoint disk counted")
    return est


def _hours(h: float) -> str:
    if h <= 0:
        return "-"
    if h < 1 / 60:
        return "<1 min"
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


def _tokens(x: float) -> str:
    if x <= 0:
        return "-"
    return f"{x / 1e6:.1f}M" if x >= 1e5 else f"{x / 1e3:.1f}k"


def format_estimate(est: Estimate, launcher: str = "local") -> str:
    phases = est.phases()
    lines = [(f"estimate ({len(est.stages)} stages to run, {est.done} already done; "
              f"assumptions in {est.assumptions or default_assumptions_path()}: user-editable, not measurements, "
              "not live prices):"),
             f"  {'stage':<9} {'to run':>6} {'GPU-hours':>10} {'longest':>9}  {'API tokens in / out':<22} cost"]
    for p, v in phases.items():
        cost = "-" if not (v["api_in"] or v["api_out"]) else (
            f"${v['cost']:,.2f}" if v["cost"] is not None else f"${v['priced']:,.2f} + unpriced")
        api = "-" if not (v["api_in"] or v["api_out"]) else f"{_tokens(v['api_in'])} / {_tokens(v['api_out'])}"
        lines.append(f"  {p:<9} {v['stages']:>6} {v['gpu_hours']:>10.1f} {_hours(v['longest_hours']):>9}  {api:<22} {cost}")
    total = sum(v["hours"] for v in phases.values())
    if launcher == "slurm":
        crit = sum(v["longest_hours"] for v in phases.values())
        lines.append(f"  wall time: {_hours(crit)} if every job starts at once (the longest job of each stage), "
                     f"{_hours(total)} one job after another")
    else:
        lines.append(f"  wall time in this process, one stage after another: {_hours(total)}")
    models = sorted({s.api_model for s in est.stages if s.api_model})
    unpriced = sorted({s.api_model for s in est.stages if s.api_model and s.cost is None})
    if models:
        lines.append(f"  API models: {', '.join(models)}" + (f"; no price in the assumptions for {', '.join(unpriced)}"
                                                              if unpriced else ""))
    if est.disk_bytes:
        lines.append(f"  checkpoints to write: {est.disk_bytes / 2**30:,.1f} GiB")
    lines += [f"  note: {n}" for n in est.notes]
    return "\n".join(lines)
