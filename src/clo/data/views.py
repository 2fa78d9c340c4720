"""Per-method views of a cross-lingual dataset, one registry, in three styles.

| view | rows per record | row |
|---|---|---|
| ``sft`` | 2 | (x_en, y_en) then (x_tgt, y_tgt), with ``"id"`` and ``"lang"`` |
| ``sft-eng`` | 1 | (x_en, y_en) |
| ``sft-tgt`` | 1 | (x_tgt, y_tgt) |
| ``dpo`` | 2 | preference rows: (x_en, y_en ≻ y_tgt) and (x_tgt, y_tgt ≻ y_en), shuffled with the seed: independent rows, as plain DPO sees them |
| ``clo`` | 1 | the quadruple ``{"id", "tgt_lang", "x_en", "y_en", "x_tgt", "y_tgt"}``: CLO needs the four sequences of an example together |

Styles (:data:`STYLES`) of the sft and dpo rows:

- ``conversational`` (the CLI's default): TRL's conversational formats, ``{"prompt": [{"role":
  "user", "content": x}], "completion": [{"role": "assistant", "content": y}]}`` and ``{"prompt":
  [user], "chosen": [assistant], "rejected": [assistant]}``. TRL then renders them with the
  tokenizer's chat template exactly as :mod:`clo.formatting` does (the prompt with the generation
  prompt, the completion as what the full conversation adds), so a TRL baseline trains on the
  prompts clo trains and evaluates on.
- ``standard``: the same keys with plain strings (TRL's standard formats; TRL applies no chat
  template to them, so a model trained on them sees other prompts than clo's).
- ``llama-factory``: LLaMA-Factory's OpenAI-style sharegpt format, ``{"messages": [user,
  assistant]}`` and, for dpo, ``{"messages": [user], "chosen": {assistant}, "rejected":
  {assistant}}``; :func:`dataset_info` is its ``dataset_info.json`` entry.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from clo.data.records import CrossLingualRecord, write_rows
from clo.errors import InputError
from clo.io import read_json, write_json
from clo.registry import Registry, UnknownName, unknown_name_message

STYLES = ("conversational", "standard", "llama-factory")


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _sft_row(row_id: str, prompt: str, completion: str, lang: str, style: str) -> dict:
    if style == "conversational":
        return {"id": row_id, "prompt": [_user(prompt)], "completion": [_assistant(completion)], "lang": lang}
    if style == "llama-factory":
        return {"id": row_id, "messages": [_user(prompt), _assistant(completion)], "lang": lang}
    return {"id": row_id, "prompt": prompt, "completion": completion, "lang": lang}


def _pref_row(row_id: str, prompt: str, chosen: str, rejected: str, style: str) -> dict:
    if style == "conversational":
        return {"id": row_id, "prompt": [_user(prompt)], "chosen": [_assistant(chosen)],
                "rejected": [_assistant(rejected)]}
    if style == "llama-factory":
        return {"id": row_id, "messages": [_user(prompt)], "chosen": _assistant(chosen),
                "rejected": _assistant(rejected)}
    return {"id": row_id, "prompt": prompt, "chosen": chosen, "rejected": rejected}


def _sft_rows(r: CrossLingualRecord, which: tuple[str, ...], style: str) -> list[dict]:
    out = []
    for lang in which:
        if lang == "en":
            out.append(_sft_row(f"{r.id}/en", r.x_en, r.y_en, "en", style))
        else:
            out.append(_sft_row(f"{r.id}/{r.tgt_lang}", r.x_tgt, r.y_tgt, r.tgt_lang, style))
    return out


def view_sft(records, seed=0, style="standard"):
    return [row for r in records for row in _sft_rows(r, ("en", "tgt"), style)]


def view_sft_eng(records, seed=0, style="standard"):
    return [row for r in records for row in _sft_rows(r, ("en",), style)]


def view_sft_tgt(records, seed=0, style="standard"):
    return [row for r in records for row in _sft_rows(r, ("tgt",), style)]


def view_dpo(records, seed=0, style="standard"):
    rows = []
    for r in records:
        rows.append(_pref_row(f"{r.id}/en", r.x_en, r.y_en, r.y_tgt, style))
        rows.append(_pref_row(f"{r.id}/{r.tgt_lang}", r.x_tgt, r.y_tgt, r.y_en, style))
    random.Random(seed).shuffle(rows)
    return rows


def view_clo(records, seed=0, style="standard"):
    if style == "llama-factory":
        raise ValueError("LLaMA-Factory has no CLO loss: export the sft or dpo view for it (the clo view "
                         "is the quadruple clo train reads)")
    return [{"id": r.id, "tgt_lang": r.tgt_lang, "x_en": r.x_en, "y_en": r.y_en, "x_tgt": r.x_tgt,
             "y_tgt": r.y_tgt} for r in records]


VIEWS: Registry[Callable[..., list[dict]]] = Registry("view", {
    "sft": view_sft,
    "sft-eng": view_sft_eng,
    "sft-tgt": view_sft_tgt,
    "dpo": view_dpo,
    "clo": view_clo,
})
PREFERENCE_VIEWS = ("dpo",)


def make_view(name: str, records: list[CrossLingualRecord], seed: int = 0,
              style: str = "standard") -> list[dict]:
    fn = VIEWS.get(name)
    if style not in STYLES:
        raise UnknownName(unknown_name_message("view format", style, STYLES), style)
    return fn(records, seed, style)


def write_view(rows: list[dict], path: str | Path) -> Path:
    """``.json``: one JSON list (what LLaMA-Factory and most tools call a JSON file); ``.parquet``:
    Parquet; anything else JSON lines. Atomic (temp file + rename)."""
    path = Path(path)
    if path.suffix != ".json":
        return write_rows(rows, path)
    return write_json(path, rows, indent=1)


_LF_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
            "system_tag": "system"}


def dataset_info(view: str, file_name: str) -> dict:
    """The LLaMA-Factory ``dataset_info.json`` entry of a ``llama-factory`` view file."""
    if view == "clo":
        raise ValueError("LLaMA-Factory has no CLO loss: export the sft or dpo view for it")
    entry: dict = {"file_name": file_name, "formatting": "sharegpt"}
    if view in PREFERENCE_VIEWS:
        entry["ranking"] = True
        entry["columns"] = {"messages": "messages", "chosen": "chosen", "rejected": "rejected"}
    else:
        entry["columns"] = {"messages": "messages"}
    entry["tags"] = dict(_LF_TAGS)
    return entry


def write_dataset_info(view_file: str | Path, view: str, name: str | None = None) -> Path:
    """Add (or replace) the entry of ``view_file`` in the ``dataset_info.json`` of its directory
    (LLaMA-Factory's ``dataset_dir``); other entries are kept. ``name``: the dataset name
    (default: the file's stem)."""
    view_file = Path(view_file)
    info_path = view_file.parent / "dataset_info.json"
    info = {}
    if info_path.is_file():
        info = read_json(info_path)  # malformed: an InputError naming the line
        if not isinstance(info, dict):
            raise InputError(info_path, None, f"expected a JSON object of datasets, got {type(info).__name__}")
    info[name or view_file.name.split(".")[0]] = dataset_info(view, view_file.name)
    return write_json(info_path, info, indent=2)
