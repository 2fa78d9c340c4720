"""Building the cross-lingual dataset: English source -> translation -> checks -> files.

:func:`build_dataset` writes into ``out_dir``:

- ``train.jsonl`` and ``validation.jsonl`` (or ``.parquet``): the records that pass every check,
  in the :class:`~clo.data.records.CrossLingualRecord` schema;
- ``subsets/train_<k>.jsonl``: the first ``k`` training records for every configured size
  ``k`` below the training-set size, plus the whole training set as ``train_<len>`` when a
  configured size reaches it (so 200 ⊂ 400 ⊂ ... ⊂ all, nested by construction);
- ``rejects.jsonl``: every record that failed, with its reasons (nothing is dropped silently);
- ``summary.json`` and ``summary.md``: counts, rejects by reason, cache hits, time.

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
import time
from collections import Counter
from pathlib import Path

from clo.data.checks import check_record
from clo.data.records import CrossLingualRecord, write_records
from clo.data.sources import SourceExample, load_source
from clo.data.translate import TranslationStats, make_translator, translate_texts

log = logging.getLogger(__name__)


def split_indices(n: int, val_fraction: float, seed: int) -> list[int]:
    """Sorted indices of the validation records: a seeded sample of ``round(val_fraction * n)``."""
    k = round(val_fraction * n)
    if val_fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)  # at least one of each when asked for a split at all
    return sorted(random.Random(seed).sample(range(n), k))


def subset_sizes(requested: list[int], n_train: int) -> list[int]:
    """The nested subset sizes: requested sizes below ``n_train``, and ``n_train`` itself when a
    requested size reaches it."""
    sizes = sorted({s for s in requested if s < n_train})
    if any(s >= n_train for s in requested) and n_train > 0:
        sizes.append(n_train)
    return sizes


def _records_from(examples: list[SourceExample], x_tgt: list[str], y_tgt: list[str], cfg, fingerprint: str):
    accepted, rejected = [], []
    for ex, xt, yt in zip(examples, x_tgt, y_tgt):
        checks = check_record(ex.x_en, ex.y_en, xt, yt, cfg.lang, cfg.data.checks)
        rec = CrossLingualRecord(
            id=ex.id, tgt_lang=cfg.lang, x_en=ex.x_en, y_en=ex.y_en, x_tgt=xt, y_tgt=yt, source=ex.source,
            meta={"translator": fingerprint, "checks": checks},
        )
        (accepted if checks["passed"] else rejected).append(rec)
    return accepted, rejected


def _write_jsonl(rows: list[dict], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def summary_markdown(s: dict) -> str:
    lines = [
        f"# Cross-lingual dataset: {s['source']} -> {s['tgt_lang']}", "",
        "| | |", "|---|---|",
        f"| English examples read | {s['records_in']} |",
        f"| records passing all checks | {s['records_out']} ({100 * s['pass_rate']:.1f}%) |",
        f"| train / validation | {s['train']} / {s['validation']} |",
        f"| rejects | {s['rejects']} |",
        f"| translator | `{s['translator']}` |",
        f"| segments (unique) | {s['translation']['segments']} ({s['translation']['unique_segments']}) |",
        f"| cache hits / translated | {s['translation']['cache_hits']} / {s['translation']['translated']} |",
        f"| translation speed | {s['translation']['segments_per_second']} segments/s |",
        f"| time | {s['seconds']} s |", "",
    ]
    if s["rejects_by_reason"]:
        lines += ["## Rejects by reason", "", "| reason | records |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in s["rejects_by_reason"].items()]
        lines.append("")
    if s["subsets"]:
        lines += ["## Nested subsets", "", ", ".join(str(k) for k in s["subsets"]), ""]
    return "\n".join(lines)


def build_dataset(cfg, out_dir: Path, *, progress: bool = True) -> dict:
    """Build the dataset of ``cfg.data`` for target language ``cfg.lang`` into ``out_dir``.

    Returns the summary (also written to ``summary.json``).
    """
    t0 = time.perf_counter()
    d = cfg.data
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_path = Path(d.cache) if d.cache else out_dir / "translations.sqlite"
    ext = ".parquet" if d.format == "parquet" else ".jsonl"

    examples = load_source(d.source, d.path, d.n, d.max_chars)
    log.info("read %d English examples from %s", len(examples), d.path or d.source)
    # Empty sources are rejected before translation: no point paying for them.
    usable = [ex for ex in examples if ex.x_en.strip() and ex.y_en.strip()]
    source_rejects = []
    for ex in examples:
        reasons = [f"empty_{k}" for k in ("x_en", "y_en") if not getattr(ex, k).strip()]
        if reasons:
            source_rejects.append({"id": ex.id, "reasons": reasons, "record": ex.__dict__})

    translator = make_translator(d.translator)
    stats = TranslationStats()
    try:
        texts = [ex.x_en for ex in usable] + [ex.y_en for ex in usable]
        out = translate_texts(texts, "en", cfg.lang, translator, cache_path, progress=progress, stats=stats)
    finally:
        translator.close()
    x_tgt, y_tgt = out[: len(usable)], out[len(usable):]
    accepted, rejected = _records_from(usable, x_tgt, y_tgt, cfg, translator.fingerprint())

    val_idx = set(split_indices(len(accepted), d.val_fraction, d.seed))
    train = [r for i, r in enumerate(accepted) if i not in val_idx]
    val = [r for i, r in enumerate(accepted) if i in val_idx]
    files = {
        "train": str(write_records(train, out_dir / f"train{ext}")),
        "validation": str(write_records(val, out_dir / f"validation{ext}")),
    }
    subsets = {}
    for k in subset_sizes(d.subsets, len(train)):
        subsets[k] = str(write_records(train[:k], out_dir / "subsets" / f"train_{k}{ext}"))
    reject_rows = source_rejects + [
        {"id": r.id, "reasons": r.meta["checks"]["reasons"], "record": r.to_dict()} for r in rejected
    ]
    _write_jsonl(reject_rows, out_dir / "rejects.jsonl")
    files["rejects"] = str(out_dir / "rejects.jsonl")

    by_reason = Counter(reason for row in reject_rows for reason in row["reasons"])
    summary = {
        "source": d.source, "path": d.path, "tgt_lang": cfg.lang, "n": d.n, "max_chars": d.max_chars,
        "records_in": len(examples), "records_out": len(accepted),
        "pass_rate": round(len(accepted) / len(examples), 4) if examples else 0.0,
        "train": len(train), "validation": len(val), "rejects": len(reject_rows),
        "rejects_by_reason": dict(sorted(by_reason.items())),
        "subsets": subsets, "files": files, "cache": str(cache_path),
        "translator": translator.fingerprint(), "translation": stats.to_dict(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    log.info("built %d records (%d train, %d validation), %d rejects %s, %d cache hits, %.1fs",
             len(accepted), len(train), len(val), len(reject_rows), dict(by_reason), stats.cache_hits,
             summary["seconds"])
    return summary
