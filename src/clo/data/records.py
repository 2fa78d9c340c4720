"""The cross-lingual record (docs/data.md, "The record schema") and its JSONL / JSON / Parquet files.

One record is one parallel quadruple ``(x_en, y_en, x_tgt, y_tgt)``. Reading validates every
line: a malformed line, a missing field or an empty text is an error naming file, line and field.

A run with several target languages (``lang: [sw, yo]``) reads :class:`MultilingualRecord` s
instead (:func:`read_multilingual`): the English pair once and ``tgt: {code: {x_tgt, y_tgt}}``
for every language; :meth:`MultilingualRecord.view` is one language's plain record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clo.data.recordio import RecordError, iter_jsonl, record_error
from clo.io import atomic_path, read_json, write_jsonl

TEXT_FIELDS = ("x_en", "y_en", "x_tgt", "y_tgt")
REQUIRED_FIELDS = ("id", "tgt_lang", *TEXT_FIELDS)


@dataclass
class CrossLingualRecord:
    id: str
    tgt_lang: str
    x_en: str
    y_en: str
    x_tgt: str
    y_tgt: str
    source: str = ""
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        # The documented key order (docs/data.md), so files diff and hash stably.
        return {k: d[k] for k in ("id", "source", "tgt_lang", *TEXT_FIELDS, "meta")}

    @classmethod
    def from_dict(cls, obj: dict, path: str | Path = "<memory>", line: int | None = None) -> CrossLingualRecord:
        if not isinstance(obj, dict):
            raise RecordError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
        for name in REQUIRED_FIELDS:
            if name not in obj or obj[name] is None:
                raise RecordError(path, line, name, "missing field")
            if not isinstance(obj[name], str):
                raise RecordError(path, line, name, f"expected a string, got {type(obj[name]).__name__}")
        for name in TEXT_FIELDS:
            if not obj[name].strip():
                raise RecordError(path, line, name, "empty text")
        meta = obj.get("meta") or {}
        if not isinstance(meta, dict):
            raise RecordError(path, line, "meta", f"expected an object, got {type(meta).__name__}")
        return cls(
            id=str(obj["id"]), tgt_lang=obj["tgt_lang"], x_en=obj["x_en"], y_en=obj["y_en"],
            x_tgt=obj["x_tgt"], y_tgt=obj["y_tgt"], source=str(obj.get("source") or ""), meta=meta,
        )


MULTI_FIELDS = ("id", "source", "tgt_langs", "x_en", "y_en", "tgt", "meta")


@dataclass
class MultilingualRecord:
    """One English pair and its translation into each of ``tgt_langs`` (docs/data.md)."""

    id: str
    tgt_langs: list[str]
    x_en: str
    y_en: str
    tgt: dict[str, dict[str, str]]  # code -> {"x_tgt": ..., "y_tgt": ...}
    source: str = ""
    meta: dict = field(default_factory=dict)

    def text(self, side: str, lang: str) -> str:
        """The prompt (``side="x"``) or response (``"y"``) in ``lang`` (``en`` or a target)."""
        return getattr(self, f"{side}_en") if lang == "en" else self.tgt[lang][f"{side}_tgt"]

    def view(self, lang: str) -> CrossLingualRecord:
        """The plain record of one target language (its checks in ``meta``)."""
        checks = (self.meta.get("checks") or {}).get(lang)
        meta = {k: v for k, v in self.meta.items() if k != "checks"}
        if checks is not None:
            meta["checks"] = checks
        return CrossLingualRecord(self.id, lang, self.x_en, self.y_en, self.tgt[lang]["x_tgt"],
                                  self.tgt[lang]["y_tgt"], self.source, meta)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tgt"] = {c: {"x_tgt": self.tgt[c]["x_tgt"], "y_tgt": self.tgt[c]["y_tgt"]} for c in self.tgt_langs}
        return {k: d[k] for k in MULTI_FIELDS}

    @classmethod
    def from_dict(cls, obj: dict, path: str | Path = "<memory>", line: int | None = None) -> MultilingualRecord:
        if not isinstance(obj, dict):
            raise RecordError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
        for name in ("id", "x_en", "y_en"):
            if not isinstance(obj.get(name), str):
                raise RecordError(path, line, name, "missing field" if obj.get(name) is None else "expected a string")
            if not obj[name].strip():
                raise RecordError(path, line, name, "empty text")
        langs, tgt = obj.get("tgt_langs"), obj.get("tgt")
        if not isinstance(langs, list) or len(langs) < 2 or not all(isinstance(c, str) for c in langs):
            raise RecordError(path, line, "tgt_langs", "expected a list of two or more language codes")
        if not isinstance(tgt, dict):
            raise RecordError(path, line, "tgt", "expected an object {code: {x_tgt, y_tgt}}")
        for code in langs:
            for name in ("x_tgt", "y_tgt"):
                text = (tgt.get(code) or {}).get(name)
                if not isinstance(text, str) or not text.strip():
                    raise RecordError(path, line, f"tgt.{code}.{name}", "missing field" if text is None else "empty text")
        meta = obj.get("meta") or {}
        if not isinstance(meta, dict):
            raise RecordError(path, line, "meta", f"expected an object, got {type(meta).__name__}")
        return cls(id=str(obj["id"]), tgt_langs=list(langs), x_en=obj["x_en"], y_en=obj["y_en"],
                   tgt={c: {"x_tgt": tgt[c]["x_tgt"], "y_tgt": tgt[c]["y_tgt"]} for c in langs},
                   source=str(obj.get("source") or ""), meta=meta)


def read_multilingual(path: str | Path, langs: list[str] | None = None) -> list[MultilingualRecord]:
    """Multilingual records (JSONL or Parquet), validated; ``langs``: the languages every record
    must carry (a record may carry more; the run uses these)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such dataset file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = list(enumerate(pq.read_table(path).to_pylist(), 1))
        for _, r in rows:
            if isinstance(r.get("meta"), str):
                r["meta"] = json.loads(r["meta"])
    else:
        rows = list(iter_jsonl(path))
    records, seen = [], {}
    for line, obj in rows:
        if isinstance(obj, dict) and "tgt_langs" not in obj and "tgt_lang" in obj:
            raise RecordError(path, line, "tgt_langs", f"a single-language record ({obj['tgt_lang']!r}): a run "
                              "with several target languages reads multilingual records (docs/data.md)")
        rec = MultilingualRecord.from_dict(obj, path, line)
        missing = [c for c in langs or [] if c not in rec.tgt]
        if missing:
            raise RecordError(path, line, "tgt", f"no translation into {missing} (the run's languages are {langs})")
        if rec.id in seen:
            raise RecordError(path, line, "id", f"duplicate id {rec.id!r} (first at record {seen[rec.id]})")
        seen[rec.id] = line
        records.append(rec)
    return records


def write_multilingual(records: Iterable[MultilingualRecord], path: str | Path) -> Path:
    rows = [r.to_dict() for r in records]
    if Path(path).suffix == ".parquet":
        for r in rows:
            r["meta"] = json.dumps(r["meta"], ensure_ascii=False, sort_keys=True)
    return write_rows(rows, path)


def read_records(path: str | Path) -> list[CrossLingualRecord]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such dataset file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        for r in rows:  # meta is stored as a JSON string: Parquet has no free-form maps
            if isinstance(r.get("meta"), str):
                r["meta"] = json.loads(r["meta"])
        records = [CrossLingualRecord.from_dict(r, path, i) for i, r in enumerate(rows, 1)]
    elif path.suffix == ".json" and path.read_bytes().lstrip()[:1] == b"[":
        records = _records_of_list(path)
    else:
        records = []
        for line, obj in iter_jsonl(path):
            try:
                records.append(CrossLingualRecord.from_dict(obj, path, line))
            except RecordError as e:
                raise _with_hint(e, obj) from None
    seen: dict[str, int] = {}
    for i, r in enumerate(records, 1):
        if r.id in seen:
            raise RecordError(path, i, "id", f"duplicate id {r.id!r} (first at record {seen[r.id]})")
        seen[r.id] = i
    return records


def write_rows(rows: list[dict], path: str | Path) -> Path:
    """Write dicts as JSONL, or Parquet when the path ends in .parquet, atomically (temp file +
    rename): a killed write never leaves a truncated file."""
    path = Path(path)
    if path.suffix != ".parquet":
        return write_jsonl(path, rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    return path


def write_records(records: Iterable[CrossLingualRecord], path: str | Path) -> Path:
    rows = [r.to_dict() for r in records]
    if Path(path).suffix == ".parquet":
        for r in rows:  # Parquet has no free-form maps: meta travels as a JSON string
            r["meta"] = json.dumps(r["meta"], ensure_ascii=False, sort_keys=True)
    return write_rows(rows, path)


def format_hint(obj) -> str | None:
    """What a row that is no cross-lingual record looks like, and which command reads it."""
    from clo.data.sources import detect_format

    if isinstance(obj, dict) and "tgt_langs" in obj:
        return ("a multilingual record (tgt_langs, tgt): a run with lang set to its languages reads it "
                "(docs/data.md, Multilingual records)")
    fmt = detect_format(obj) if isinstance(obj, dict) else None
    if fmt == "parallel":
        return ("a parallel record without the fields above: `clo data check FILE --lang xx --out DIR` "
                "reads it (ids made when absent, other column names through data.columns) and writes "
                "checked records")
    if fmt == "preference":
        return ("this is a TRL preference row (prompt/chosen/rejected), not a cross-lingual record "
                f"({', '.join(REQUIRED_FIELDS)}): use it as English source data (clo data build --source "
                "trl), or export preference views from records with clo data view --view dpo")
    if fmt is not None:
        return (f"this is an English {fmt} row, not a cross-lingual record ({', '.join(REQUIRED_FIELDS)}): "
                "translate it with clo data build --source auto --path FILE")
    return None


def _with_hint(e: RecordError, obj) -> RecordError:
    hint = format_hint(obj) if e.reason == "missing field" else None
    return RecordError(e.path, e.line, e.field, f"{e.reason}; {hint}") if hint else e


def _records_of_list(path: Path) -> list[CrossLingualRecord]:
    """Records written as one JSON list (``.json``); a bad item is named by its position."""
    data = read_json(path, error=record_error)
    out = []
    for k, obj in enumerate(data):
        try:
            out.append(CrossLingualRecord.from_dict(obj, path, None))
        except RecordError as e:
            e = _with_hint(e, obj)
            raise RecordError(path, None, f"[{k}]" + (f".{e.field}" if e.field else ""), e.reason) from None
    return out
