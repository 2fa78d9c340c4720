"""English instruction sources, each yielding single-turn pairs ``(id, x_en, y_en)``.

One registry (:data:`SOURCES`) maps the ``data.source`` config value to a loader
``loader(path, n) -> list[SourceExample]``. Loaders apply their source's selection rule and
return examples in a deterministic order; they do not drop anything for being empty (the builder
rejects empty texts with a reason, so nothing disappears silently) except where the rule itself
says so (oasst1: empty messages are not candidates).

oasst1 rule (the paper's, made exact):

1. Rows are oasst1 messages (``message_id, parent_id, message_tree_id, role, text, lang, rank,
   deleted, review_result, ...``), from the hub (``OpenAssistant/oasst1``, train split, then
   validation) or a local export of the same rows (``.jsonl``, ``.jsonl.gz``, ``.parquet``, or a
   directory of those, read in sorted file order).
2. A message is *usable* when ``deleted`` is not true, ``review_result`` is not false, ``lang``
   is ``en`` and its text is not blank.
3. A pair is a usable root (``parent_id`` null, ``role`` ``prompter``) and its best usable direct
   reply with ``role`` ``assistant``: the lowest ``rank``; replies without a rank come after
   ranked ones; ties go to the earlier row. Later turns are ignored (first turn only).
4. Pairs are ordered by the chosen reply's rank (unranked last), ties in the order of the roots
   in the data; the first ``n`` are taken. The pair id is the root's ``message_id``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from clo.data.records import RecordError, iter_jsonl


@dataclass(frozen=True)
class SourceExample:
    id: str
    x_en: str
    y_en: str
    source: str


OASST1_HUB_ID = "OpenAssistant/oasst1"
_OASST_FIELDS = ("message_id", "parent_id", "role", "text")


def _iter_rows_file(path: Path) -> Iterator[tuple[Path, int, dict]]:
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield path, i, row
    elif name.endswith(".jsonl.gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for lineno, raw in enumerate(f, 1):
                if raw.strip():
                    try:
                        yield path, lineno, json.loads(raw)
                    except json.JSONDecodeError as e:
                        raise RecordError(path, lineno, None, f"malformed JSON: {e.msg} (column {e.colno})") from None
    elif name.endswith((".jsonl", ".json")):
        for lineno, obj in iter_jsonl(path):
            yield path, lineno, obj
    else:
        raise ValueError(f"{path}: unsupported oasst1 export (use .jsonl, .jsonl.gz or .parquet)")


def _oasst_rows(path: str | None) -> Iterator[tuple[str, int, dict]]:
    if path is None:
        from datasets import load_dataset

        ds = load_dataset(OASST1_HUB_ID)
        for split in ("train", "validation"):
            if split in ds:
                for i, row in enumerate(ds[split], 1):
                    yield f"{OASST1_HUB_ID}[{split}]", i, row
        return
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith((".jsonl", ".jsonl.gz", ".parquet")))
        if not files:
            raise FileNotFoundError(f"{p}: no .jsonl, .jsonl.gz or .parquet files")
    elif p.is_file():
        files = [p]
    else:
        raise FileNotFoundError(f"{p}: no such oasst1 export")
    for f in files:
        for fp, line, row in _iter_rows_file(f):
            yield str(fp), line, row


def _usable(row: dict) -> bool:
    return (row.get("deleted") is not True and row.get("review_result") is not False
            and row.get("lang") == "en" and bool((row.get("text") or "").strip()))


def load_oasst1(path: str | None, n: int) -> list[SourceExample]:
    roots: list[dict] = []
    replies: dict[str, list[tuple[int, dict]]] = {}
    for order, (where, line, row) in enumerate(_oasst_rows(path)):
        if not isinstance(row, dict):
            raise RecordError(where, line, None, f"expected a JSON object, got {type(row).__name__}")
        for name in _OASST_FIELDS:
            if name not in row:
                raise RecordError(where, line, name, "missing field (oasst1 message-tree schema)")
        if not _usable(row):
            continue
        if row["parent_id"] is None and row["role"] == "prompter":
            roots.append(row)
        elif row["role"] == "assistant" and row["parent_id"] is not None:
            replies.setdefault(row["parent_id"], []).append((order, row))

    def rank_key(rank) -> tuple[int, float]:
        return (1, 0.0) if rank is None else (0, float(rank))

    pairs = []
    for root_order, root in enumerate(roots):
        cands = replies.get(root["message_id"])
        if not cands:
            continue
        order, best = min(cands, key=lambda c: (rank_key(c[1].get("rank")), c[0]))
        pairs.append((rank_key(best.get("rank")), root_order, root, best))
    pairs.sort(key=lambda p: (p[0], p[1]))
    return [SourceExample(str(r["message_id"]), r["text"], b["text"], "oasst1") for _, _, r, b in pairs[:n]]


def load_alpaca(path: str | None, n: int) -> list[SourceExample]:
    """Alpaca JSON (a list of ``{instruction, input, output}``; ``.jsonl`` with one per line also).

    ``x_en`` is the instruction, followed by a blank line and the input when there is one; the
    id is ``alpaca-<0-based position>``.
    """
    if path is None:
        raise ValueError("data.source=alpaca needs data.path (an Alpaca-style JSON file)")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such Alpaca file")
    if p.suffix == ".jsonl":
        rows = list(iter_jsonl(p))
    else:
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RecordError(p, e.lineno, None, f"malformed JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(data, list):
            raise RecordError(p, None, None, f"expected a JSON list of objects, got {type(data).__name__}")
        rows = [(None, r) for r in data]
    out = []
    for k, (line, row) in enumerate(rows[:n]):
        # A JSON list has no useful line numbers: name the item, "[3].output", instead.
        pre = "" if line is not None else f"[{k}]."
        if not isinstance(row, dict):
            raise RecordError(p, line, pre.rstrip(".") or None, f"expected an object, got {type(row).__name__}")
        for name in ("instruction", "output"):
            if name not in row or row[name] is None:
                raise RecordError(p, line, pre + name, "missing field")
            if not isinstance(row[name], str):
                raise RecordError(p, line, pre + name, f"expected a string, got {type(row[name]).__name__}")
        inp = row.get("input") or ""
        if not isinstance(inp, str):
            raise RecordError(p, line, pre + "input", f"expected a string, got {type(inp).__name__}")
        x = row["instruction"] + ("\n\n" + inp if inp.strip() else "")
        out.append(SourceExample(f"alpaca-{k}", x, row["output"], "alpaca"))
    return out


def load_chat(path: str | None, n: int) -> list[SourceExample]:
    """Chat JSONL: ``{"messages": [{"role", "content"}, ...], "id"?: ...}`` per line.

    The pair is the first ``user`` message and the ``assistant`` message right after it (system
    messages are skipped); the id is the line's ``id`` or ``chat-<line number>``.
    """
    if path is None:
        raise ValueError("data.source=chat needs data.path (a chat JSONL file)")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such chat file")
    out = []
    for line, obj in iter_jsonl(p):
        if n is not None and len(out) >= n:
            break
        if not isinstance(obj, dict):
            raise RecordError(p, line, None, f"expected a JSON object, got {type(obj).__name__}")
        msgs = obj.get("messages")
        if not isinstance(msgs, list):
            raise RecordError(p, line, "messages", "missing field or not a list")
        turns = []
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise RecordError(p, line, f"messages[{j}]", "expected an object with role and content")
            if not isinstance(m["content"], str):
                raise RecordError(p, line, f"messages[{j}].content", "expected a string")
            if m["role"] != "system":
                turns.append(m)
        if len(turns) < 2 or turns[0]["role"] != "user" or turns[1]["role"] != "assistant":
            raise RecordError(p, line, "messages", "expected a user message followed by an assistant reply")
        out.append(SourceExample(str(obj.get("id") or f"chat-{line}"), turns[0]["content"], turns[1]["content"], "chat"))
    return out


SOURCES: dict[str, Callable[[str | None, int], list[SourceExample]]] = {
    "oasst1": load_oasst1,
    "alpaca": load_alpaca,
    "chat": load_chat,
}


def load_source(name: str, path: str | None, n: int, max_chars: int | None = None) -> list[SourceExample]:
    """The first ``n`` examples of a source; with ``max_chars``, the first ``n`` of those whose
    ``len(x_en) + len(y_en) <= max_chars`` (short pairs for a quick CPU run). None at all is an
    error naming the file."""
    try:
        loader = SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown data source {name!r}; known: {', '.join(SOURCES)}") from None
    if path is not None and Path(path).is_file() and Path(path).stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), no {name} examples")
    if max_chars is None:
        examples = loader(path, n)
    else:
        examples = [ex for ex in loader(path, None) if len(ex.x_en) + len(ex.y_en) <= max_chars][:n]
    if not examples:
        # Zero examples would "build" an empty dataset and exit 0: say so, naming the file.
        where = path or f"{name} (hub)"
        within = f" with len(x_en) + len(y_en) <= {max_chars} (data.max_chars)" if max_chars is not None else ""
        raise ValueError(f"{where}: no {name} examples{within}; is it the right file, and not empty?")
    seen: dict[str, int] = {}
    for i, ex in enumerate(examples):
        if ex.id in seen:
            raise ValueError(f"{path or name}: duplicate example id {ex.id!r} (examples {seen[ex.id] + 1} and {i + 1})")
        seen[ex.id] = i
    return examples
