"""Instruction sources: English pairs ``(id, x_en, y_en)`` from any common format, or pre-translated
parallel records.

One registry (:data:`SOURCES`) maps the ``data.source`` config value to a loader
``loader(path, n, options) -> list[SourceExample]``; :func:`load_examples` reads what a
``data:`` section names. Loaders apply their source's selection rule and return examples in a
deterministic order; they do not drop anything for being empty (the builder rejects empty texts
with a reason, so nothing disappears silently) except where the rule itself says so (oasst1:
empty messages are not candidates).

Where the rows come from (``data.path``):

- a local file: ``.jsonl`` / ``.ndjson`` (also ``.gz``), ``.json`` (a list of rows, a JSON-lines
  file, or an object whose one list holds the rows), ``.parquet``, ``.csv`` / ``.tsv``;
- a local directory: one written by ``datasets``' ``save_to_disk`` (``load_from_disk``), else
  read by ``datasets.load_dataset(directory, name=data.hub_config, split=data.split)``;
- anything else that looks like a hub dataset id (``tatsu-lab/alpaca``):
  ``datasets.load_dataset(id, name=data.hub_config, split=data.split)``, the same call.

What a row is (``data.source``; ``auto`` tells each row's format by its keys):

==================  =====================================================================
``alpaca``          ``{instruction, input?, output, system?, history?}`` (Alpaca, LLaMA-Factory)
``chat``            ``{messages: [{role, content}]}`` (OpenAI; ``content`` a string or a list of
                    text parts) or ``{conversations: [{from, value}]}`` (ShareGPT); ``sharegpt``
                    is the same reading, its records say ``source: sharegpt``
``trl``             TRL's ``{prompt, completion}`` or ``{prompt, chosen, rejected}`` (strings or
                    message lists; or the implicit prompt ``{chosen, rejected}`` as
                    conversations): the pair is (prompt, completion or chosen)
``oasst1``          oasst1 message rows (the tree rule below)
``parallel``        pre-translated records ``{x_en, y_en, x_tgt, y_tgt, id?, tgt_lang?}``
==================  =====================================================================

``data.columns`` renames columns first (``columns: {instruction: question, output: answer}``), so
any column names fit. A row without an id gets ``<source>-<line>`` (JSON lines) or
``<source>-<position>`` (a list, a table, a hub dataset; 0-based).

Multi-turn conversations: the pair is the first user message and the assistant reply right after
it (the paper's rule, first turn only); the later turns are dropped and the log says how many.
System prompts are dropped too (counted), or with ``data.system_prompt: prepend`` put before the
instruction, separated by a blank line. An Alpaca row is one turn as LLaMA-Factory reads it: its
own ``instruction`` (and ``input``) and ``output`` are the pair, and ``history`` holds the turns
before it, context of the prompt: left out (counted) or, with ``data.history: prepend``, written
before the instruction as a transcript (``User: ...`` / ``Assistant: ...``).

Duplicates: a pair whose ``(x_en, y_en)`` equals an earlier one is skipped while reading (``n``
counts distinct pairs); the log and the build summary say how many.

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

import csv
import gzip
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clo.data.recordio import RecordError, iter_jsonl, record_error
from clo.io import decode_utf8
from clo.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceExample:
    id: str
    x_en: str
    y_en: str
    source: str
    # Pre-translated parallel data only (data.source: parallel): the translations and their language.
    x_tgt: str | None = None
    y_tgt: str | None = None
    tgt_lang: str | None = None
    meta: dict | None = None


@dataclass(frozen=True)
class SourceOptions:
    """How rows are read and mapped: ``data.columns``, ``split``, ``hub_config``, ``system_prompt``;
    ``lang``: the target language of parallel rows without ``tgt_lang``."""

    columns: dict[str, str] = field(default_factory=dict)
    split: str = "train"
    hub_config: str | None = None
    system_prompt: str = "drop"
    lang: str | None = None
    history: str = "drop"

    @classmethod
    def from_config(cls, d, lang: str | None = None) -> SourceOptions:
        cols = d.columns.model_dump(exclude_none=True) if hasattr(d.columns, "model_dump") else d.columns
        return cls(columns=cols, split=d.split, hub_config=d.hub_config, system_prompt=d.system_prompt,
                   lang=lang, history=getattr(d, "history", "drop"))


@dataclass
class LoadStats:
    """What reading a source left out, for the log line (nothing is dropped without a word)."""

    rows: int = 0
    multi_turn: int = 0  # conversations with turns after the first
    messages_dropped: int = 0  # messages of those later turns
    system_dropped: int = 0
    system_prepended: int = 0
    leading_assistant: int = 0  # conversations opening with an assistant message (skipped)
    ids_made: int = 0
    history_rows: int = 0  # Alpaca rows with earlier turns in `history`
    history_turns: int = 0
    history_prepended: bool = False
    duplicates: int = 0  # pairs equal to an earlier one, skipped
    tool_skipped: int = 0  # conversations whose first answer comes through a tool call
    formats: dict = field(default_factory=dict)

    def summary(self, where: str, n: int) -> str:
        fmts = ", ".join(f"{k} {v}" for k, v in self.formats.items())
        parts = [f"{where}: {n} examples from {self.rows} rows ({fmts})"]
        if self.multi_turn:
            parts.append(f"first turn only (the paper's rule): {self.multi_turn} conversations had later "
                         f"turns, {self.messages_dropped} messages dropped")
        if self.system_dropped:
            parts.append(f"{self.system_dropped} system prompts dropped "
                         "(data.system_prompt: prepend keeps them)")
        if self.system_prepended:
            parts.append(f"{self.system_prepended} system prompts put before the instruction")
        if self.leading_assistant:
            parts.append(f"{self.leading_assistant} conversations open with an assistant message (skipped)")
        if self.ids_made:
            parts.append(f"{self.ids_made} rows without an id (ids made from their position)")
        if self.history_rows:
            how = ("written before the instruction" if self.history_prepended
                   else "left out (data.history: prepend keeps them as context)")
            parts.append(f"{self.history_rows} rows had history: {self.history_turns} earlier turns {how}")
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicate pairs skipped")
        if self.tool_skipped:
            parts.append(f"{self.tool_skipped} conversations skipped (their first answer comes through a tool "
                         "call: no text pair)")
        return "; ".join(parts)


class Examples(list):
    """The examples a loader returns, with ``duplicates``: how many repeated pairs it skipped."""

    duplicates: int = 0


def _unique(examples, n: int | None, stats: LoadStats | None = None) -> Examples:
    """The first ``n`` distinct pairs (by ``(x_en, y_en)``) of ``examples``, counting the repeats."""
    out, seen, dup = Examples(), set(), 0
    for ex in examples:
        if n is not None and len(out) >= n:
            break
        key = (ex.x_en, ex.y_en)
        if key in seen:
            dup += 1
            continue
        seen.add(key)
        out.append(ex)
    out.duplicates = dup
    if stats is not None:
        stats.duplicates += dup
    return out


OASST1_HUB_ID = "OpenAssistant/oasst1"
_OASST_FIELDS = ("message_id", "parent_id", "role", "text")
_ROW_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".json", ".json.gz", ".parquet", ".csv",
                 ".tsv")


# ---------------------------------------------------------------------------------------------
# Rows: (where, line, position, row); line is None where the input has no lines (lists, tables)


@dataclass(frozen=True)
class _Loc:
    where: str
    line: int | None
    pos: int

    def err(self, fld: str | None, reason: str) -> RecordError:
        # A JSON list has no useful line numbers: name the item, "[3].output", instead.
        if self.line is None:
            fld = f"[{self.pos}]" + (f".{fld}" if fld else "")
        return RecordError(self.where, self.line, fld, reason)


def _open_text(path: Path) -> str:
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    return decode_utf8(data, path, error=record_error)


def _jsonl_text(path: Path, text: str) -> Iterator[tuple[int, object]]:
    for lineno, raw in enumerate(io.StringIO(text), 1):
        if raw.strip():
            try:
                yield lineno, json.loads(raw)
            except json.JSONDecodeError as e:
                raise RecordError(path, lineno, None, f"malformed JSON: {e.msg} (column {e.colno})") from None


def _file_rows(path: Path) -> Iterator[tuple[_Loc, object]]:
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield _Loc(str(path), None, i), row
    elif name.endswith((".csv", ".tsv")):
        text = _open_text(path)
        delimiter = "\t" if name.endswith(".tsv") else ","
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        for i, row in enumerate(reader):
            yield _Loc(str(path), reader.line_num, i), row
    elif name.endswith((".jsonl", ".ndjson")) and not name.endswith(".gz"):
        for i, (line, obj) in enumerate(iter_jsonl(path)):
            yield _Loc(str(path), line, i), obj
    elif name.endswith((".jsonl.gz", ".ndjson.gz")):
        for i, (line, obj) in enumerate(_jsonl_text(path, _open_text(path))):
            yield _Loc(str(path), line, i), obj
    elif name.endswith((".json", ".json.gz")):
        text = _open_text(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if text.lstrip().startswith("["):
                msg = f"malformed JSON: {e.msg} (column {e.colno})"
                raise RecordError(path, e.lineno, None, msg) from None
            data = None  # JSON lines in a .json file
        if data is None:
            for i, (line, obj) in enumerate(_jsonl_text(path, text)):
                yield _Loc(str(path), line, i), obj
            return
        if isinstance(data, dict):
            lists = [k for k, v in data.items()
                     if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
            if len(lists) == 1 and not _known_row(data):  # {"data": [...]}, {"train": [...]}
                for i, row in enumerate(data[lists[0]]):
                    yield _Loc(f"{path}[{lists[0]}]", None, i), row
                return
            data = [data]
        if not isinstance(data, list):
            raise RecordError(path, None, None, f"expected a JSON list of objects, got {type(data).__name__}")
        for i, row in enumerate(data):
            yield _Loc(str(path), None, i), row
    else:
        raise ValueError(f"{path}: unsupported file type (use {', '.join(_ROW_SUFFIXES)}, a dataset "
                         "directory, or a hub dataset id)")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_hub_id(path: str) -> bool:
    """``owner/name`` or ``name`` that is not a local path and has no file suffix clo reads."""
    return bool(_HUB_ID.match(path)) and not path.endswith(_ROW_SUFFIXES) and not Path(path).exists()


def _dataset_rows(ds, where: str, split: str) -> Iterator[tuple[_Loc, object]]:
    if isinstance(ds, dict):  # a DatasetDict: no split was asked for
        if split not in ds:
            raise ValueError(f"{where}: no split {split!r} (has {', '.join(ds.keys())}); set data.split")
        ds, where = ds[split], f"{where}[{split}]"
    elif split:
        where = f"{where}[{split}]"
    for i, row in enumerate(ds):
        yield _Loc(where, None, i), row


def _load_dataset_rows(path: str, options: SourceOptions) -> Iterator[tuple[_Loc, object]]:
    """Rows of a hub dataset or a local dataset directory, through ``datasets``: the same call."""
    import datasets

    p = Path(path)
    saved = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes
    if p.is_dir() and any((p / f).is_file() for f in saved):
        ds = datasets.load_from_disk(str(p))
        yield from _dataset_rows(ds, path, options.split)
        return
    try:
        ds = datasets.load_dataset(path, name=options.hub_config, split=options.split)
    except Exception as e:  # noqa: BLE001 - not found, offline, no such split or config: the input
        what = "a dataset directory" if p.is_dir() else "not a local file; as a hub dataset id"
        raise ValueError(f"{path}: {what}, datasets.load_dataset failed: {type(e).__name__}: {e}") from None
    yield from _dataset_rows(ds, path, options.split)


def iter_rows(path: str, options: SourceOptions | None = None) -> Iterator[tuple[_Loc, object]]:
    """Every row of a local file, a dataset directory or a hub dataset (module docstring)."""
    options = options or SourceOptions()
    p = Path(path)
    if p.is_file():
        yield from _file_rows(p)
    elif p.is_dir() or looks_like_hub_id(path):
        yield from _load_dataset_rows(path, options)
    else:
        raise FileNotFoundError(f"{p}: no such file or directory (and not a hub dataset id)")


# ---------------------------------------------------------------------------------------------
# Formats of a row


def _known_row(row: dict) -> bool:
    return detect_format(row) is not None


def detect_format(row: dict) -> str | None:
    """The format of one row by its keys: parallel, oasst1, chat, sharegpt, alpaca, preference,
    prompt-completion, implicit-preference; None when none fits."""
    if not isinstance(row, dict):
        return None
    keys = set(row)
    if {"x_en", "y_en", "x_tgt", "y_tgt"} <= keys:
        return "parallel"
    if set(_OASST_FIELDS) <= keys:
        return "oasst1"
    if "messages" in keys:
        return "chat"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys:
        return "alpaca"
    if "prompt" in keys and "chosen" in keys:
        return "preference"
    if "prompt" in keys and "completion" in keys:
        return "prompt-completion"
    if {"chosen", "rejected"} <= keys:
        return "implicit-preference"
    return None


FORMAT_HELP = ("messages (OpenAI chat), conversations (ShareGPT), instruction/output (Alpaca), "
               "prompt/completion or prompt/chosen/rejected (TRL), x_en/y_en/x_tgt/y_tgt (parallel), "
               "message_id/parent_id/role/text (oasst1)")
# The formats each data.source value accepts.
_ACCEPTS = {
    "alpaca": ("alpaca",),
    "chat": ("chat", "sharegpt"),
    "sharegpt": ("chat", "sharegpt"),
    "trl": ("prompt-completion", "preference", "implicit-preference"),
    "parallel": ("parallel",),
    "auto": ("alpaca", "chat", "sharegpt", "prompt-completion", "preference", "implicit-preference"),
}


def _mapped(row: dict, columns: dict[str, str], loc: _Loc) -> dict:
    """``row`` with ``data.columns`` applied: each clo field takes the named column's value."""
    if not columns:
        return row
    out = dict(row)
    for canonical, src in columns.items():
        if src not in row:
            raise loc.err(src, f"missing field (data.columns.{canonical}: {src!r}); the row has: "
                               f"{', '.join(map(str, row))}")
        out[canonical] = row[src]
    return out


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
                   "system": "system", "developer": "system", "tool": "tool", "function": "tool",
                   "function_call": "tool", "observation": "tool", "ipython": "tool"}


def _text(content, loc: _Loc, fld: str) -> str:
    """A message's text: a string, or OpenAI content parts (their text parts, joined by newlines)."""
    if isinstance(content, str):
        return content
    if content is None:
        raise loc.err(fld, "missing content (null)")
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
                continue
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise loc.err(f"{fld}[{j}]", f"a {kind or type(part).__name__} content part: clo translates "
                                             "text only; leave such rows out of the data")
        return "\n".join(texts)
    raise loc.err(fld, f"expected a string or a list of content parts, got {type(content).__name__}")


def _messages(msgs, loc: _Loc, fld: str, sharegpt: bool) -> list[tuple[str, str]]:
    if not isinstance(msgs, list):
        raise loc.err(fld, "missing field or not a list")
    out = []
    for j, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise loc.err(f"{fld}[{j}]", f"expected an object with role and content, got {type(m).__name__}")
        if "from" in m and "value" in m:
            role, content = m["from"], m["value"]
        elif "role" in m and "content" in m:
            role, content = m["role"], m["content"]
        else:
            what = "from and value (ShareGPT)" if sharegpt else "role and content"
            raise loc.err(f"{fld}[{j}]", f"expected an object with {what}")
        if content is None and (m.get("tool_calls") or m.get("function_call")):
            role, content = "tool", ""  # an OpenAI assistant message calling a tool: no text
        norm = _SHAREGPT_ROLES.get(str(role).lower())
        if norm is None:
            raise loc.err(f"{fld}[{j}]", f"unknown role {role!r} (known: user/human, assistant/gpt, system, "
                                         "tool)")
        out.append((norm, _text(content, loc, f"{fld}[{j}].{'value' if 'value' in m else 'content'}")))
    return out


def _first_turn(turns: list[tuple[str, str]], loc: _Loc, fld: str, stats: LoadStats,
                system_prompt: str, system: str | None = None) -> tuple[str, str] | None:
    """The first user message and the assistant reply right after it; counts what is left out.
    None (counted) where the first answer comes through a tool call."""
    systems = [t for r, t in turns if r == "system"] + ([system] if system and system.strip() else [])
    rest = [(r, t) for r, t in turns if r != "system"]
    k = next((i for i in range(len(rest) - 1) if (rest[i][0], rest[i + 1][0]) == ("user", "assistant")), None)
    if k is None:
        if any(r == "tool" for r, _ in rest):
            stats.tool_skipped += 1  # the first answer comes through a tool call: no text pair to translate
            return None
        raise loc.err(fld, "expected a user message followed by an assistant reply")
    if any(r == "assistant" for r, _ in rest[:k]):
        stats.leading_assistant += 1
    later = rest[k + 2:]
    if later:
        stats.multi_turn += 1
        stats.messages_dropped += len(later)
    x, y = rest[k][1], rest[k + 1][1]
    if systems:
        if system_prompt == "prepend":
            stats.system_prepended += 1
            x = "\n\n".join([*systems, x])
        else:
            stats.system_dropped += 1
    return x, y


def _string(row: dict, name: str, loc: _Loc, required: bool = True) -> str:
    v = row.get(name)
    if v is None:
        if required:
            raise loc.err(name, "missing field")
        return ""
    if not isinstance(v, str):
        raise loc.err(name, f"expected a string, got {type(v).__name__}")
    return v


def _id(row: dict, name: str, loc: _Loc, stats: LoadStats) -> str:
    """The row's id, or ``<name>-<0-based position>`` (chat JSON lines: ``chat-<line>``, as before)."""
    v = row.get("id")
    if v is None or (isinstance(v, str) and not v.strip()):
        stats.ids_made += 1
        return f"{name}-{loc.line if name in ('chat', 'sharegpt') and loc.line is not None else loc.pos}"
    return str(v)


def _turns(v, loc: _Loc, fld: str, role: str) -> list[tuple[str, str]]:
    """A TRL column: a string (one message of ``role``) or a message list."""
    if isinstance(v, str):
        return [(role, v)]
    if v is None:
        raise loc.err(fld, "missing field")
    return _messages(v, loc, fld, sharegpt=False)


def _example(row: dict, fmt: str, loc: _Loc, stats: LoadStats, opts: SourceOptions,
             source: str) -> SourceExample | None:
    if fmt == "alpaca":
        inst = _string(row, "instruction", loc)
        out = _string(row, "output", loc)
        inp = _string(row, "input", loc, required=False)
        system = row.get("system") if isinstance(row.get("system"), str) else None
        history = row.get("history")
        # LLaMA-Factory's reading: the row's own instruction/output is the pair; history is the
        # earlier turns, context of the prompt, never the pair.
        x, y = inst + ("\n\n" + inp if inp.strip() else ""), out
        if history:
            if not isinstance(history, list) or any(
                    not isinstance(h, (list, tuple)) or len(h) != 2 or not all(isinstance(t, str) for t in h)
                    for h in history):
                raise loc.err("history", "expected a list of [instruction, response] string pairs")
            stats.history_rows += 1
            stats.history_turns += len(history)
            if opts.history == "prepend":
                stats.history_prepended = True
                x = "\n\n".join([*(f"User: {q}\n\nAssistant: {a}" for q, a in history), f"User: {x}"])
        if system and system.strip():
            if opts.system_prompt == "prepend":
                stats.system_prepended += 1
                x = system + "\n\n" + x
            else:
                stats.system_dropped += 1
        return SourceExample(_id(row, source, loc, stats), x, y, source)
    if fmt in ("chat", "sharegpt"):
        fld = "messages" if fmt == "chat" else "conversations"
        turns = _messages(row.get(fld), loc, fld, sharegpt=fmt == "sharegpt")
        chosen = row.get("chosen")
        if isinstance(chosen, dict) and turns and turns[-1][0] == "user":
            # LLaMA-Factory's ShareGPT preference rows: the conversation ends with the user's turn,
            # and `chosen` / `rejected` are the candidate replies.
            turns += _messages([chosen], loc, "chosen", sharegpt=fmt == "sharegpt")
        system = row.get("system") if isinstance(row.get("system"), str) else None
        pair = _first_turn(turns, loc, fld, stats, opts.system_prompt, system)
        if pair is None:
            return None
        x, y = pair
        return SourceExample(_id(row, source, loc, stats), x, y, source)
    if fmt == "implicit-preference":
        # TRL's implicit prompt: chosen and rejected are whole conversations sharing the prompt.
        if not isinstance(row.get("chosen"), list):
            raise loc.err("prompt", "missing field (a preference row with string chosen/rejected needs its "
                                    "prompt; TRL's implicit prompt is for conversations)")
        x, y = _first_turn(_turns(row.get("chosen"), loc, "chosen", "assistant"), loc, "chosen", stats,
                           opts.system_prompt)
        return SourceExample(_id(row, source, loc, stats), x, y, source)
    if fmt in ("prompt-completion", "preference"):
        key = "completion" if fmt == "prompt-completion" else "chosen"
        turns = _turns(row.get("prompt"), loc, "prompt", "user") + _turns(row.get(key), loc, key, "assistant")
        x, y = _first_turn(turns, loc, "prompt", stats, opts.system_prompt)
        return SourceExample(_id(row, source, loc, stats), x, y, source)
    if fmt == "parallel":
        texts = {k: _string(row, k, loc) for k in ("x_en", "y_en", "x_tgt", "y_tgt")}
        lang = row.get("tgt_lang") or opts.lang
        if not lang:
            raise loc.err("tgt_lang", "missing field (or give the language: --lang)")
        if opts.lang and str(lang).lower() != opts.lang.lower():
            raise loc.err("tgt_lang", f"{lang!r}, but the target language is {opts.lang!r}")
        meta = row.get("meta") if isinstance(row.get("meta"), dict) else None
        src = row.get("source") if isinstance(row.get("source"), str) else "parallel"
        return SourceExample(_id(row, "parallel", loc, stats), texts["x_en"], texts["y_en"],
                             src or "parallel", texts["x_tgt"], texts["y_tgt"], opts.lang or lang, meta)
    raise AssertionError(fmt)  # pragma: no cover


def _read(source: str, path: str | None, n: int | None, options: SourceOptions | None,
          rows: Iterator[tuple[_Loc, object]] | None = None) -> list[SourceExample]:
    """The first ``n`` examples of the rows of ``path`` in the formats ``source`` accepts."""
    opts = options or SourceOptions()
    if path is None and rows is None:
        raise ValueError(f"data.source={source} needs data.path (a file, a dataset directory or a hub id)")
    accepts = _ACCEPTS[source]
    stats = LoadStats()
    out, seen = Examples(), set()
    where = path
    for loc, raw in rows if rows is not None else iter_rows(path, opts):
        if n is not None and len(out) >= n:
            break
        where = loc.where
        if not isinstance(raw, dict):
            raise loc.err(None, f"expected a JSON object, got {type(raw).__name__}")
        stats.rows += 1
        row = _mapped(raw, opts.columns, loc)
        fmt = detect_format(row)
        if fmt is None and source in _PRIMARY:
            raise loc.err(_PRIMARY[source], f"missing field; {_wrong_format(source, fmt, row)}")
        if fmt not in accepts:
            raise loc.err(None, _wrong_format(source, fmt, row))
        stats.formats[fmt] = stats.formats.get(fmt, 0) + 1
        # The source name in made ids and in records: the one the user wrote (auto: the row's format's).
        name = _SOURCE_OF[fmt] if source == "auto" else source
        ex = _example(row, fmt, loc, stats, opts, name)
        if ex is None:
            continue
        if (ex.x_en, ex.y_en) in seen:
            stats.duplicates += 1
            continue
        seen.add((ex.x_en, ex.y_en))
        out.append(ex)
    out.duplicates = stats.duplicates
    if out:
        log.info("%s", stats.summary(where or source, len(out)))
    return out


_SOURCE_OF = {"alpaca": "alpaca", "chat": "chat", "sharegpt": "sharegpt", "prompt-completion": "trl",
              "preference": "trl", "implicit-preference": "trl", "parallel": "parallel"}
# The field an explicitly named source misses first (chat: "field 'messages' missing field").
_PRIMARY = {"alpaca": "instruction", "chat": "messages", "sharegpt": "conversations", "trl": "prompt",
            "parallel": "x_en"}


def _wrong_format(source: str, fmt: str | None, row: dict) -> str:
    keys = ", ".join(map(str, row)) or "none"
    if fmt is None:
        return (f"not a row clo knows (keys: {keys}); expected one of: {FORMAT_HELP}; name your columns with "
                "data.columns (e.g. --set data.columns.instruction=question)")
    if fmt == "parallel":
        return (f"a pre-translated parallel record (keys: {keys}), not English source data: check it with "
                "`clo data check FILE --lang xx`")
    if fmt == "oasst1":
        return f"an oasst1 message row (keys: {keys}): use data.source: oasst1 (or auto)"
    wanted = {"alpaca": "instruction/output (Alpaca)", "chat": "messages or conversations (chat)",
              "sharegpt": "messages or conversations (chat)",
              "trl": "prompt/completion or prompt/chosen (TRL)",
              "parallel": "x_en/y_en/x_tgt/y_tgt (parallel)"}.get(source, source)
    name = {"chat": "chat", "sharegpt": "chat", "prompt-completion": "trl", "preference": "trl"}.get(fmt, fmt)
    return (f"a {fmt} row (keys: {keys}), but data.source={source} reads {wanted}: use data.source: {name} "
            "(--source auto tells each row's format)")


# ---------------------------------------------------------------------------------------------
# oasst1


def _oasst_rows(path: str | None, options: SourceOptions | None = None) -> Iterator[tuple[str, int, dict]]:
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
    elif looks_like_hub_id(path):
        for loc, row in _load_dataset_rows(path, options or SourceOptions()):
            yield loc.where, loc.pos + 1, row
        return
    else:
        raise FileNotFoundError(f"{p}: no such oasst1 export")
    for f in files:
        if not f.name.endswith((".jsonl", ".jsonl.gz", ".json", ".parquet")):
            raise ValueError(f"{f}: unsupported oasst1 export (use .jsonl, .jsonl.gz or .parquet)")
        for loc, row in _file_rows(f):
            yield loc.where, loc.line if loc.line is not None else loc.pos + 1, row


def _usable(row: dict) -> bool:
    return (row.get("deleted") is not True and row.get("review_result") is not False
            and row.get("lang") == "en" and bool((row.get("text") or "").strip()))


def _oasst1_pairs(rows: Iterator[tuple[str, int, dict]], n: int | None) -> list[SourceExample]:
    roots: list[dict] = []
    replies: dict[str, list[tuple[int, dict]]] = {}
    for order, (where, line, row) in enumerate(rows):
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
    out = _unique((SourceExample(str(r["message_id"]), r["text"], b["text"], "oasst1") for _, _, r, b in pairs), n)
    if out.duplicates:
        log.info("oasst1: %d duplicate pairs skipped", out.duplicates)
    return out


def load_oasst1(path: str | None, n: int | None, options: SourceOptions | None = None) -> list[SourceExample]:
    return _oasst1_pairs(_oasst_rows(path, options), n)


# ---------------------------------------------------------------------------------------------
# The loaders of the registry


def load_alpaca(path: str | None, n: int | None, options: SourceOptions | None = None) -> list[SourceExample]:
    """Alpaca rows ``{instruction, input, output}`` (a JSON list, JSON lines, a table, a dataset).

    ``x_en`` is the instruction, followed by a blank line and the input when there is one; the
    id is the row's ``id`` or ``alpaca-<0-based position>``.
    """
    if path is None:
        raise ValueError("data.source=alpaca needs data.path (an Alpaca-style JSON file or a hub dataset id)")
    p = Path(path)
    if not p.exists() and not looks_like_hub_id(path):
        raise FileNotFoundError(f"{p}: no such Alpaca file (and not a hub dataset id)")
    return _read("alpaca", path, n, options)


def load_chat(path: str | None, n: int | None, options: SourceOptions | None = None) -> list[SourceExample]:
    """Chats: OpenAI ``{"messages": [{"role", "content"}]}`` (content a string or text parts) or
    ShareGPT ``{"conversations": [{"from", "value"}]}``, as JSON lines, a JSON list, a table or a
    dataset. The pair is the first ``user`` message and the ``assistant`` message right after it
    (system messages are dropped or prepended, later turns dropped, both counted in the log); the id
    is the row's ``id`` or ``chat-<line number>`` (``chat-<position>`` where there are no lines)."""
    if path is None:
        raise ValueError("data.source=chat needs data.path (a chat JSONL/JSON file or a hub dataset id)")
    p = Path(path)
    if not p.exists() and not looks_like_hub_id(path):
        raise FileNotFoundError(f"{p}: no such chat file (and not a hub dataset id)")
    return _read("chat", path, n, options)


def load_sharegpt(path: str | None, n: int | None, options: SourceOptions | None = None) -> list[SourceExample]:
    """The chat loader under the name ``sharegpt``: records say ``source: sharegpt``."""
    if path is None:
        raise ValueError("data.source=sharegpt needs data.path (a ShareGPT JSON/JSONL file or a hub dataset id)")
    p = Path(path)
    if not p.exists() and not looks_like_hub_id(path):
        raise FileNotFoundError(f"{p}: no such ShareGPT file (and not a hub dataset id)")
    return _read("sharegpt", path, n, options)


def load_trl(path: str | None, n: int | None, options: SourceOptions | None = None) -> list[SourceExample]:
    """TRL rows: ``{prompt, completion}`` or ``{prompt, chosen, rejected}`` (strings or message
    lists); the pair is (prompt, completion or chosen); ``rejected`` is not used."""
    return _read("trl", path, n, options)


def load_auto(path: str | None, n: int | None, options: SourceOptions | None = None) -> list[SourceExample]:
    """Any format of the module docstring, told by each row's keys (oasst1 by the first row's)."""
    if path is None:
        return load_oasst1(None, n, options)
    rows = iter_rows(path, options)
    first = next(rows, None)
    if first is None:
        return []
    loc, row = first
    mapped = _mapped(row, (options or SourceOptions()).columns, loc) if isinstance(row, dict) else None
    if mapped is not None and detect_format(mapped) == "oasst1":
        return load_oasst1(path, n, options)

    def again():
        yield first
        yield from rows

    return _read("auto", path, n, options, again())


def load_parallel(path: str | None, n: int | None,
                  options: SourceOptions | None = None) -> list[SourceExample]:
    """Pre-translated parallel records ``{x_en, y_en, x_tgt, y_tgt, id?, tgt_lang?, source?, meta?}``
    (map other column names with ``data.columns``); ids made when absent (``parallel-<line>``)."""
    return _read("parallel", path, n, options)


SOURCES: Registry[Callable[..., list[SourceExample]]] = Registry("data source", {
    "oasst1": load_oasst1,
    "alpaca": load_alpaca,
    "chat": load_chat,
    "sharegpt": load_sharegpt,
    "trl": load_trl,
    "auto": load_auto,
    "parallel": load_parallel,
})


def load_source(name: str, path: str | None, n: int | None, max_chars: int | None = None,
                options: SourceOptions | None = None, *, allow_parallel: bool = False) -> list[SourceExample]:
    """The first ``n`` examples of a source; with ``max_chars``, the first ``n`` of those whose
    ``len(x_en) + len(y_en) <= max_chars`` (short pairs for a quick CPU run). None at all is an
    error naming the file. Pre-translated rows (``parallel``) only where the caller takes their
    translations (``allow_parallel``): anything else would translate them again."""
    loader = SOURCES.get(name)
    if name == "parallel" and not allow_parallel:
        raise ValueError(f"{path}: data.source=parallel holds translations already: check them with "
                         "`clo data check FILE --lang xx` (this build path would translate them again)")
    if path is not None and Path(path).is_file() and Path(path).stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), no {name} examples")
    if max_chars is None:
        examples = loader(path, n, options)
    else:
        loaded = loader(path, None, options)
        examples = Examples([ex for ex in loaded if len(ex.x_en) + len(ex.y_en) <= max_chars][:n])
        examples.duplicates = getattr(loaded, "duplicates", 0)
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


def load_examples(d, lang: str | None = None, *, allow_parallel: bool = False) -> list[SourceExample]:
    """The examples a ``data:`` section names (source, path, n, max_chars, columns, split,
    hub_config, system_prompt); ``lang``: the target language of parallel rows."""
    return load_source(d.source, d.path, d.n, d.max_chars, SourceOptions.from_config(d, lang),
                       allow_parallel=allow_parallel)
