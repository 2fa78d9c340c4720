"""MMMLU format items (the paper's Appendix D): a few MMMLU questions added to training so that a
model learns the answer format, and left out of the MMMLU evaluation.

``data.mmmlu_format_items: k`` picks ``k`` question positions with ``data.seed``
(:func:`item_ids`) and adds one cross-lingual record per position: the English question with its
answer line (``Answer: C``) and the same question in the target language with the target answer
line (``답변: C``), so ``k`` English and ``k`` target-language items, as in Appendix D. MMMLU's
files are translations of MMLU's test set, row for row; a target file whose subject or answer at a
chosen position differs from the English one is refused. The MMMLU task leaves out exactly these
positions in every language it evaluates (:func:`clo.eval.mmmlu.format_items_left_out`).

The responses are the answer line alone: the paper does not print its format items' responses,
and the answer line is what the MMMLU prompt asks for and what the extractor reads.
"""

from __future__ import annotations

from pathlib import Path

from clo.config_base import ConfigError
from clo.data.records import CrossLingualRecord

SOURCE = "mmmlu-format"


def item_ids(n_rows: int, k: int, seed: int) -> list[str]:
    """The row ids of the ``k`` format items among ``n_rows`` questions (the MMMLU task's
    :func:`clo.eval.mmmlu.format_item_ids`, which its evaluation leaves out)."""
    from clo.eval.mmmlu import format_item_ids

    return format_item_ids(n_rows, k, seed)


def _data_dir(cfg) -> Path | None:
    d = getattr(getattr(cfg, "eval", None), "data_dir", None)
    return Path(d) if d else None


def _prompt(row: dict, lang) -> str:
    from clo.eval.mmmlu import render_prompt

    return render_prompt(row, lang)


def records(cfg) -> list[CrossLingualRecord]:
    """The format items of ``cfg`` (``data.mmmlu_format_items``) as cross-lingual records, read
    from MMMLU (``eval.data_dir``, else the hub)."""
    k = cfg.data.mmmlu_format_items
    if k <= 0:
        return []
    from clo import languages
    from clo.eval.mmmlu import load_rows

    en, tgt = languages.get("en"), languages.get(cfg.lang)
    data_dir = _data_dir(cfg)
    en_rows = load_rows(en, data_dir)
    tgt_rows = en_rows if tgt.code == "en" else load_rows(tgt, data_dir)
    if len(tgt_rows) != len(en_rows):
        raise ConfigError(f"data.mmmlu_format_items: MMMLU in {tgt.name} has {len(tgt_rows)} questions, in English "
                          f"{len(en_rows)}; the format items need the two row for row")
    out = []
    for rid in item_ids(len(en_rows), k, cfg.data.seed):
        e, t = en_rows[int(rid)], tgt_rows[int(rid)]
        if (e["Subject"], e["Answer"]) != (t["Subject"], t["Answer"]):
            raise ConfigError(f"data.mmmlu_format_items: MMMLU row {rid} in {tgt.name} ({t['Subject']}, answer "
                              f"{t['Answer']}) is not English row {rid} ({e['Subject']}, answer {e['Answer']}); "
                              "the files are not row for row")
        out.append(CrossLingualRecord(
            id=f"{SOURCE}-{rid}", tgt_lang=cfg.lang, x_en=_prompt(e, en), y_en=f"{en.answer_word}: {e['Answer']}",
            x_tgt=_prompt(t, tgt), y_tgt=f"{tgt.answer_word}: {t['Answer']}", source=SOURCE,
            meta={"mmmlu_row": int(rid), "subject": e["Subject"]}))
    return out
