"""Per-method views of a cross-lingual dataset (DESIGN.md section 1), one registry.

| view | rows per record | row |
|---|---|---|
| ``sft`` | 2 | ``{"id", "prompt", "completion", "lang"}``: (x_en, y_en) then (x_tgt, y_tgt) |
| ``sft-eng`` | 1 | (x_en, y_en) |
| ``sft-tgt`` | 1 | (x_tgt, y_tgt) |
| ``dpo`` | 2 | TRL preference rows ``{"id", "prompt", "chosen", "rejected"}``: (x_en, y_en ≻ y_tgt) and (x_tgt, y_tgt ≻ y_en), shuffled with the seed: independent rows, as plain DPO sees them |
| ``clo`` | 1 | the quadruple ``{"id", "tgt_lang", "x_en", "y_en", "x_tgt", "y_tgt"}``: CLO needs the four sequences of an example together |

``prompt``/``completion`` and ``prompt``/``chosen``/``rejected`` are TRL's standard
(non-conversational) dataset formats; the chat template is applied later by
:mod:`clo.formatting`, the same way for training and evaluation.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from clo.data.records import CrossLingualRecord, write_rows


def _sft_rows(r: CrossLingualRecord, which: tuple[str, ...]) -> list[dict]:
    out = []
    for lang in which:
        if lang == "en":
            out.append({"id": f"{r.id}/en", "prompt": r.x_en, "completion": r.y_en, "lang": "en"})
        else:
            out.append({"id": f"{r.id}/{r.tgt_lang}", "prompt": r.x_tgt, "completion": r.y_tgt, "lang": r.tgt_lang})
    return out


def view_sft(records, seed=0):
    return [row for r in records for row in _sft_rows(r, ("en", "tgt"))]


def view_sft_eng(records, seed=0):
    return [row for r in records for row in _sft_rows(r, ("en",))]


def view_sft_tgt(records, seed=0):
    return [row for r in records for row in _sft_rows(r, ("tgt",))]


def view_dpo(records, seed=0):
    rows = []
    for r in records:
        rows.append({"id": f"{r.id}/en", "prompt": r.x_en, "chosen": r.y_en, "rejected": r.y_tgt})
        rows.append({"id": f"{r.id}/{r.tgt_lang}", "prompt": r.x_tgt, "chosen": r.y_tgt, "rejected": r.y_en})
    random.Random(seed).shuffle(rows)
    return rows


def view_clo(records, seed=0):
    return [{"id": r.id, "tgt_lang": r.tgt_lang, "x_en": r.x_en, "y_en": r.y_en, "x_tgt": r.x_tgt,
             "y_tgt": r.y_tgt} for r in records]


VIEWS: dict[str, Callable[[list[CrossLingualRecord], int], list[dict]]] = {
    "sft": view_sft,
    "sft-eng": view_sft_eng,
    "sft-tgt": view_sft_tgt,
    "dpo": view_dpo,
    "clo": view_clo,
}


def make_view(name: str, records: list[CrossLingualRecord], seed: int = 0) -> list[dict]:
    try:
        fn = VIEWS[name]
    except KeyError:
        raise ValueError(f"unknown view {name!r}; known: {', '.join(VIEWS)}") from None
    return fn(records, seed)


def write_view(rows: list[dict], path: str | Path) -> Path:
    """JSONL, or Parquet when the path ends in .parquet (atomic)."""
    return write_rows(rows, path)
