"""Building the cross-lingual dataset: English source -> translation -> checks -> files.

:func:`build_dataset` writes into ``out_dir``:

- ``train.jsonl`` and ``validation.jsonl`` (or ``.parquet``): the records that pass every check,
  in the :class:`~clo.data.records.CrossLingualRecord` schema;
- ``subsets/train_<k>.jsonl``: the first ``k`` training records for every configured size
  ``k`` below the training-set size, plus the whole training set as ``train_<len>`` when a
  configured size reaches it (so 200 ⊂ 400 ⊂ ... ⊂ all, nested by construction);
- ``rejects.jsonl``: every record that failed, with its reasons (nothing is dropped silently);
  a record with a failed segment (:class:`~clo.data.translators.SegmentFailure`) is rejected with
  reasons ``segment_<kind>_<field>`` and the failed segments under ``failures``, never written
  half translated;
- ``summary.json`` and ``summary.md``: counts, rejects by reason, cache hits, requests, retries,
  failed segments, tokens used, time, and the build's ``fingerprint``;
- ``build.json``: the fingerprint of everything that makes the build (:func:`build_inputs`: the
  data config with the translator's, the language, the source file's or directory's content
  digest, the translation model directory's identity, the translation prompt version). A
  directory holding the outputs of other inputs is refused with :class:`BuildMismatch` naming the
  differing keys, unless ``overwrite`` (its outputs are removed first; the translation cache,
  keyed by translator and text, is kept).

A build that reads no example, or where no record passes, writes its files and then raises
:class:`BuildError` (``clo data build`` exits non-zero): an empty training set is never a success.

With several target languages (``lang: [sw, yo]``) every English example is translated into
each of them through the one translation cache, and the files hold
:class:`~clo.data.records.MultilingualRecord` s: a record is kept only when every language's
translation passes its checks (its L_CL terms need all of them), its reject row names the
failing languages (``sw:lang_y_tgt``). ``validation_<code>.jsonl`` are the validation records of
one language each, as plain records (held-out prompts of the evaluations).

Order and split are deterministic: records keep the source order (oasst1: order of ranking);
the validation records are a seeded random sample (``data.seed``) of ``round(val_fraction * n)``
of the passing records, the rest is ``train`` in source order. Interrupt a build at any point
and run it again: the translation cache (:mod:`clo.data.cache`) serves all finished batches and
the files come out byte-identical.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections import Counter
from pathlib import Path

from clo.data import format_items
from clo.data.cache import set_aside
from clo.data.checks import check_record, record_similarities
from clo.data.records import CrossLingualRecord, MultilingualRecord, write_multilingual, write_records
from clo.data.sources import SourceExample, load_examples
from clo.data.translators import PROMPT_VERSION, Translated, TranslationStats, make_translator, translate_all
from clo.errors import CloError
from clo.fingerprints import content_digest, differing_keys, fingerprint
from clo.io import write_json, write_jsonl

log = logging.getLogger(__name__)


class BuildError(CloError, ValueError):
    """A build that produced nothing to train on; the message names the file."""


class BuildMismatch(CloError, ValueError):
    """The output directory holds a build of other inputs; the message names the differing keys."""


# Settings that change how a build runs, not what it makes: a build resumes with other values of
# them (a smaller batch after running out of memory, another cache file, more retries). The
# translation cache is keyed without them too, so a cached segment is served whatever they are.
OPERATIONAL_KEYS = ("cache", "translator.batch_tokens", "translator.batch_size", "translator.concurrency",
                    "translator.max_retries", "translator.timeout", "translator.api_key_env", "translator.device",
                    "translator.base_url")  # where the model is served, not what translates
RECORD = "build.json"
# What a build writes (both formats), removed before a build of other inputs; nothing else in
# the directory is touched (the translation cache least of all).
_OUTPUTS = ("train.jsonl", "train.parquet", "validation.jsonl", "validation.parquet", "rejects.jsonl",
            "summary.json", "summary.md", "subsets")


def _without(tree: dict, dotted: tuple[str, ...]) -> dict:
    out = json.loads(json.dumps(tree))
    for key in dotted:
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.get(p, {})
        node.pop(last, None)
    return out


def build_inputs(cfg) -> dict:
    """What a build's outputs depend on: the data config (but for :data:`OPERATIONAL_KEYS`, and
    ``path``, which the source's content digest stands for), the language, the source's content,
    the translation model directory's identity and the translation prompt version."""
    d = cfg.data
    inputs: dict = {"lang": cfg.lang, "data": _without(d.model_dump(mode="json"), OPERATIONAL_KEYS),
                    "prompt_version": PROMPT_VERSION}
    if d.path:
        inputs["source"] = content_digest(Path(d.path))
        if not inputs["source"].get("missing"):  # a hub dataset id: its name is what identifies it
            inputs["data"].pop("path")
    model_dir = Path(d.translator.model).expanduser()
    if model_dir.is_dir():
        from clo.train.reference import model_identity

        inputs["translator_model"] = model_identity(str(model_dir))
    return json.loads(json.dumps(inputs))  # as stored: tuples become lists


def claim_directory(out_dir: Path, inputs: dict, overwrite: bool = False) -> str:
    """Make ``out_dir`` the build of ``inputs`` and return their fingerprint. A directory holding
    the outputs of other inputs (or outputs without a ``build.json``) raises :class:`BuildMismatch`
    naming the differing keys, unless ``overwrite``: then those outputs are removed. A directory
    with no outputs yet (a build that failed or was killed before writing them) is taken over."""
    out_dir = Path(out_dir)
    fp = fingerprint(inputs)
    record = out_dir / RECORD
    old = None
    if record.is_file():
        try:
            old = json.loads(record.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            old = None
    if old is not None and old.get("fingerprint") == fp:
        return fp
    present = [out_dir / n for n in _OUTPUTS if (out_dir / n).exists()] + sorted(out_dir.glob("validation_*"))
    if present:
        if isinstance(old, dict) and isinstance(old.get("inputs"), dict):
            keys = differing_keys(old["inputs"], inputs) or ["(fingerprint)"]
        else:
            keys = [f"(no readable {RECORD})"]
        if not overwrite:
            raise BuildMismatch(f"{out_dir} holds a build of another configuration (differing: {', '.join(keys)}); "
                                f"pass --overwrite to start over there, or choose another output directory")
        log.warning("%s: a build of another configuration (differing: %s); starting over (the translation "
                    "cache is kept)", out_dir, ", ".join(keys))
        for p in present:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(record, {"fingerprint": fp, "inputs": inputs}, indent=1)
    return fp


def check_translator(cfg) -> None:
    """The translator's checks that need no model (the causal translator: few-shot examples for
    every target language), so that a build fails in a second, not after loading a model."""
    d = cfg.data
    if d.source == "parallel":
        return
    from clo.data.translators import TRANSLATORS

    check = getattr(TRANSLATORS.get(d.translator.kind), "check_languages", None)
    if check is not None:
        for lang in (cfg.langs if hasattr(cfg, "langs") else [cfg.lang]):
            check(d.translator, "en", lang)


def split_indices(n: int, val_fraction: float, seed: int) -> list[int]:
    """Sorted indices of the validation records: a seeded sample of ``round(val_fraction * n)``."""
    k = round(val_fraction * n)
    if val_fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)  # at least one of each when asked for a split at all
    return sorted(random.Random(seed).sample(range(n), k))


def size_warnings(n: int, usable: int, n_train: int, n_val: int, rejects: int, subsets: list[int]) -> list[str]:
    """What a build of ``n`` examples gives short of what it was asked for: a source with fewer
    usable English examples than ``n``, and nested subsets that reach past the training split
    (they are the whole split instead, smaller than their name)."""
    out = []
    if usable < n:
        out.append(f"the source has {usable} usable English examples, fewer than data.n = {n}: the build "
                   f"trains on {n_train} pairs ({n_val} for validation, {rejects} rejected)")
    big = sorted(s for s in subsets if s > n_train)
    if big and n_train > 0:
        out.append(f"data.subsets {', '.join(map(str, big))}: the training split has {n_train} pairs, so "
                   f"{'those sizes train' if len(big) > 1 else 'that size trains'} on {n_train}")
    return out


def subset_sizes(requested: list[int], n_train: int) -> list[int]:
    """The nested subset sizes: requested sizes below ``n_train``, and ``n_train`` itself when a
    requested size reaches it."""
    sizes = sorted({s for s in requested if s < n_train})
    if any(s >= n_train for s in requested) and n_train > 0:
        sizes.append(n_train)
    return sizes


def _failure_rows(results: dict[str, Translated]) -> tuple[list[str], list[dict]]:
    """Reasons (``segment_<kind>_<field>``, each once) and details of a record's failed segments."""
    reasons, rows = [], []
    for name, res in results.items():
        for seg, f in res.failures.items():
            reason = f"segment_{f.kind}_{name}"
            if reason not in reasons:
                reasons.append(reason)
            rows.append({"field": name, "segment": seg, "reason": f.kind, "detail": f.detail})
    return reasons, rows


def _records_from(examples: list[SourceExample], x_res: list[Translated], y_res: list[Translated], cfg,
                  fingerprint: str) -> tuple[list[CrossLingualRecord], list[dict]]:
    """(accepted records, reject rows). A record with a failed segment is rejected unchecked:
    its texts are incomplete, and they are null in the reject row."""
    accepted, rejects = [], []
    sims = record_similarities([(ex.x_en, ex.y_en, xr.text, yr.text) for ex, xr, yr in zip(examples, x_res, y_res)],
                               cfg.data.checks)
    for ex, xr, yr, sim in zip(examples, x_res, y_res, sims):
        rec = CrossLingualRecord(id=ex.id, tgt_lang=cfg.lang, x_en=ex.x_en, y_en=ex.y_en, x_tgt=xr.text,
                                 y_tgt=yr.text, source=ex.source, meta={"translator": fingerprint})
        reasons, failures = _failure_rows({"x_tgt": xr, "y_tgt": yr})
        if failures:
            rec.meta["checks"] = {"passed": False, "reasons": reasons}
            rejects.append({"id": ex.id, "reasons": reasons, "failures": failures, "record": rec.to_dict()})
            continue
        rec.meta["checks"] = check_record(ex.x_en, ex.y_en, xr.text, yr.text, cfg.lang, cfg.data.checks,
                                          similarity=sim)
        if rec.meta["checks"]["passed"]:
            accepted.append(rec)
        else:
            rejects.append({"id": ex.id, "reasons": rec.meta["checks"]["reasons"], "record": rec.to_dict()})
    return accepted, rejects


def _multilingual_records(examples: list[SourceExample], results: dict[str, tuple[list[Translated], list[Translated]]],
                          cfg, fingerprint: str) -> tuple[list[MultilingualRecord], list[dict]]:
    """(accepted, reject rows) of a multilingual build: ``results`` maps each language to its
    (x, y) translations. Kept only when every language passes; reasons are ``<code>:<reason>``."""
    accepted, rejects = [], []
    langs = list(results)
    sims = {lang: record_similarities([(ex.x_en, ex.y_en, results[lang][0][i].text, results[lang][1][i].text)
                                       for i, ex in enumerate(examples)], cfg.data.checks) for lang in langs}
    for i, ex in enumerate(examples):
        tgt, checks, reasons, failures = {}, {}, [], []
        for lang in langs:
            xr, yr = results[lang][0][i], results[lang][1][i]
            tgt[lang] = {"x_tgt": xr.text, "y_tgt": yr.text}
            why, rows = _failure_rows({"x_tgt": xr, "y_tgt": yr})
            if rows:
                checks[lang] = {"passed": False, "reasons": why}
                failures += [{"lang": lang, **r} for r in rows]
            else:
                checks[lang] = check_record(ex.x_en, ex.y_en, xr.text, yr.text, lang, cfg.data.checks,
                                            similarity=sims[lang][i])
            reasons += [f"{lang}:{r}" for r in checks[lang]["reasons"]]
        checks.update(passed=not reasons, reasons=reasons)
        rec = MultilingualRecord(id=ex.id, tgt_langs=langs, x_en=ex.x_en, y_en=ex.y_en, tgt=tgt, source=ex.source,
                                 meta={"translator": fingerprint, "checks": checks})
        if not reasons:
            accepted.append(rec)
        else:
            rejects.append({"id": ex.id, "reasons": reasons, **({"failures": failures} if failures else {}),
                            "record": rec.to_dict()})
    return accepted, rejects


def _write_jsonl(rows: list[dict], path: Path) -> None:
    write_jsonl(path, rows)


def _request_lines(t: dict) -> list[str]:
    """Endpoint translators only: requests, retries, tokens used."""
    if not t["requests"]:
        return []
    u = t["usage"]
    return [f"| requests / retries | {t['requests']} / {t['retries']} |",
            f"| tokens used (prompt / completion) | {u.get('prompt_tokens', 0)} / {u.get('completion_tokens', 0)} |"]


def summary_markdown(s: dict) -> str:
    lines = [
        f"# Cross-lingual dataset: {s['source']} -> {s['tgt_lang']}", "",
        "| | |", "|---|---|",
        f"| English examples read | {s['records_in']} |",
        f"| duplicate pairs skipped | {s.get('duplicates_skipped', 0)} |",
        f"| records passing all checks | {s['records_out']} ({100 * s['pass_rate']:.1f}%) |",
        f"| train / validation | {s['train']} / {s['validation']} |",
        *([f"| MMMLU format items in train (Appendix D) | {len(s['mmmlu_format_items'])} (rows "
           f"{', '.join(map(str, s['mmmlu_format_items']))}) |"] if s.get("mmmlu_format_items") else []),
        f"| rejects | {s['rejects']} |",
        f"| translator | `{s['translator']}` |",
        f"| segments (unique) | {s['translation']['segments']} ({s['translation']['unique_segments']}) |",
        f"| cache hits / translated | {s['translation']['cache_hits']} / {s['translation']['translated']} |",
        f"| failed segments | {s['translation']['failed']} |",
    ]
    lines += _request_lines(s["translation"])
    lines += [
        f"| translation speed | {s['translation']['segments_per_second']} segments/s |",
        f"| time | {s['seconds']} s |", "",
    ]
    if s.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in s["warnings"]] + [""]
    if s["rejects_by_reason"]:
        lines += ["## Rejects by reason", "", "| reason | records |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in s["rejects_by_reason"].items()]
        lines.append("")
    if s["subsets"]:
        lines += ["## Nested subsets", "", ", ".join(str(k) for k in s["subsets"]), ""]
    return "\n".join(lines)


def build_dataset(cfg, out_dir: Path, *, progress: bool = True, rebuild_cache: bool = False,
                  overwrite: bool = False) -> dict:
    """Build the dataset of ``cfg.data`` for target language ``cfg.lang`` into ``out_dir``.

    Returns the summary (also written to ``summary.json``). ``rebuild_cache`` moves the
    translation cache aside first (:func:`clo.data.cache.set_aside`): a damaged one is refused.
    A directory holding a build of other inputs raises :class:`BuildMismatch` naming the
    differing keys, unless ``overwrite`` (its outputs are removed, the translation cache kept).
    Raises :class:`BuildError` after writing the files when no record passes.
    """
    out_dir = Path(out_dir)
    check_translator(cfg)
    existed, had_record = out_dir.is_dir(), (out_dir / RECORD).is_file()
    fp = claim_directory(out_dir, build_inputs(cfg), overwrite)
    try:
        return _build(cfg, out_dir, fp, progress=progress, rebuild_cache=rebuild_cache)
    except BaseException:
        # Refused before any output (a bad row, a translator that does not load): the directory is
        # left as it was found, with no build.json claiming it for a build that never was.
        if not any((out_dir / n).exists() for n in _OUTPUTS):
            if not had_record:
                (out_dir / RECORD).unlink(missing_ok=True)
            if not existed and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()
        raise


def _build(cfg, out_dir: Path, fp: str, *, progress: bool, rebuild_cache: bool) -> dict:
    t0 = time.perf_counter()
    d = cfg.data
    cache_path = Path(d.cache) if d.cache else out_dir / "translations.sqlite"
    ext = ".parquet" if d.format == "parquet" else ".jsonl"
    if rebuild_cache:
        set_aside(cache_path)

    langs = cfg.langs if hasattr(cfg, "langs") else [cfg.lang]
    multi = len(langs) > 1
    if multi and d.mmmlu_format_items:
        raise BuildError("data.mmmlu_format_items: MMMLU format items are added to single-language builds only")
    if multi and d.source == "parallel":
        raise BuildError("data.source parallel holds one language's translations; a build with several target "
                         "languages translates an English source (or build each language and join them by id)")
    examples = load_examples(d, None if multi else cfg.lang, allow_parallel=not multi)
    log.info("read %d English examples from %s", len(examples), d.path or d.source)
    # Empty sources are rejected before translation: no point paying for them.
    usable = [ex for ex in examples if ex.x_en.strip() and ex.y_en.strip()]
    source_rejects = []
    for ex in examples:
        reasons = [f"empty_{k}" for k in ("x_en", "y_en") if not getattr(ex, k).strip()]
        if reasons:
            source_rejects.append({"id": ex.id, "reasons": reasons, "record": ex.__dict__})

    stats = TranslationStats()
    if multi:
        translator = make_translator(d.translator)
        results = {}
        try:
            texts = [ex.x_en for ex in usable] + [ex.y_en for ex in usable]
            for lang in langs:  # one cache, keyed by target language: a single-language build's rows serve too
                out = translate_all(texts, "en", lang, translator, cache_path, progress=progress, stats=stats)
                results[lang] = (out[: len(usable)], out[len(usable):])
        finally:
            translator.close()
        translator_fp = translator.fingerprint()
    elif d.source == "parallel":  # translated elsewhere: the checks only, no translator
        translator_fp = "pretranslated"
        x_res, y_res = [Translated(ex.x_tgt) for ex in usable], [Translated(ex.y_tgt) for ex in usable]
    else:
        translator = make_translator(d.translator)
        try:
            texts = [ex.x_en for ex in usable] + [ex.y_en for ex in usable]
            out = translate_all(texts, "en", cfg.lang, translator, cache_path, progress=progress, stats=stats)
        finally:
            translator.close()
        translator_fp = translator.fingerprint()
        x_res, y_res = out[: len(usable)], out[len(usable):]
    if multi:
        accepted, rejected = _multilingual_records(usable, results, cfg, translator_fp)
        write = write_multilingual
    else:
        accepted, rejected = _records_from(usable, x_res, y_res, cfg, translator_fp)
        write = write_records

    val_idx = set(split_indices(len(accepted), d.val_fraction, d.seed))
    train = [r for i, r in enumerate(accepted) if i not in val_idx]
    val = [r for i, r in enumerate(accepted) if i in val_idx]
    # Appendix D: MMMLU format items join every training set (the full split and each subset).
    fmt = format_items.records(cfg) if d.mmmlu_format_items else []
    files = {
        "train": str(write(train + fmt, out_dir / f"train{ext}")),
        "validation": str(write(val, out_dir / f"validation{ext}")),
    }
    if multi:
        for lang in langs:
            files[f"validation_{lang}"] = str(write_records([r.view(lang) for r in val], out_dir / f"validation_{lang}{ext}"))
    subsets = {}
    for k in subset_sizes(d.subsets, len(train)):
        subsets[k] = str(write(train[:k] + fmt, out_dir / "subsets" / f"train_{k}{ext}"))
    reject_rows = source_rejects + rejected
    _write_jsonl(reject_rows, out_dir / "rejects.jsonl")
    files["rejects"] = str(out_dir / "rejects.jsonl")

    by_reason = Counter(reason for row in reject_rows for reason in row["reasons"])
    warnings = size_warnings(d.n, len(usable), len(train), len(val), len(reject_rows), d.subsets)
    for w in warnings:
        log.warning("%s", w)
    summary = {
        "source": d.source, "path": d.path, "tgt_lang": "+".join(langs), "n": d.n, "max_chars": d.max_chars,
        "records_in": len(examples), "duplicates_skipped": getattr(examples, "duplicates", 0),
        "records_out": len(accepted),
        "pass_rate": round(len(accepted) / len(examples), 4) if examples else 0.0,
        "train": len(train), "validation": len(val), "rejects": len(reject_rows),
        "rejects_by_reason": dict(sorted(by_reason.items())),
        "subsets": subsets, "files": files, "cache": str(cache_path),
        "translator": translator_fp, "translation": stats.to_dict(),
        "seconds": round(time.perf_counter() - t0, 2), "fingerprint": fp, "warnings": warnings,
        "mmmlu_format_items": [r.meta["mmmlu_row"] for r in fmt],
    }
    if multi:
        summary["tgt_langs"] = langs
        summary["passed_per_lang"] = {lang: sum(1 for row in rejected if not any(
            r.startswith(f"{lang}:") for r in row["reasons"])) + len(accepted) for lang in langs}
    write_json(out_dir / "summary.json", summary)
    (out_dir / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    log.info("built %d records (%d train, %d validation), %d rejects %s, %d cache hits, %d failed segments, "
             "%d requests (%d retries), %.1fs", len(accepted), len(train), len(val), len(reject_rows), dict(by_reason),
             stats.cache_hits, stats.failed, stats.requests, stats.retries, summary["seconds"])
    if not accepted:
        raise BuildError(_nothing_passed(files["train"], summary))
    return summary


def _nothing_passed(train_file: str, s: dict) -> str:
    top = ", ".join(f"{k} {v}" for k, v in sorted(s["rejects_by_reason"].items(), key=lambda kv: -kv[1])[:3])
    return (f"{train_file}: no record passed ({s['records_in']} read, {s['rejects']} rejected: {top}); "
            f"see {s['files']['rejects']}")
