"""Cutting a text into translatable segments and verbatim pieces, and putting it back together.

Translation models have hard length limits (M2M100: 1,024 positions) and small causal models
translate one line at a time far better than a page, so every text is cut into pieces:

- fenced code blocks (```` ``` ```` or ``~~~`` up to the matching closing fence) and inline code
  (`` `x` ``) are **verbatim**: never sent to a translator, copied back byte for byte;
- line breaks, leading indentation and markdown markers (``#``, ``-``, ``*``, ``+``, ``1.``,
  ``1)``, ``>``, table pipes) are verbatim;
- the rest of each line (a paragraph) is one **segment**, unless it is longer than the model's
  limit: then it is cut into sentences, and a sentence still too long into word chunks;
- whitespace around a segment is verbatim, so a translator sees stripped text; a piece without
  any letter (numbers, punctuation, URLs only) is verbatim too.

Invariant (tested): ``"".join(p.text for p in segment_text(t, ...)) == t`` for every text, and
:func:`reassemble` with the identity translation returns the text unchanged.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

_INLINE_CODE = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
# Indentation, then one or more markdown markers: headings, quotes, bullets, ordered items,
# task-list boxes and table pipes.
_LINE_PREFIX = re.compile(r"^[ \t]*(?:(?:#{1,6}|>|[-*+]|\d{1,9}[.)]|\[[ xX]\]|\|)[ \t]+)*")
# A sentence ends at . ! ? … or the CJK full stops, optionally followed by closing quotes or
# brackets; the whitespace after it belongs to neither sentence.
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])[\"'”’)\]]*(\s+)")
_CJK_SENTENCE_END = re.compile(r"(?<=[。！？])")
_TABLE_PIPE = re.compile(r"(\s*(?<!\\)\|\s*)")


@dataclass(frozen=True)
class Piece:
    text: str
    translate: bool  # True: a segment sent to the translator; False: copied verbatim


def _has_letters(text: str) -> bool:
    return any(unicodedata.category(ch).startswith("L") for ch in text)


def approx_tokens(text: str) -> int:
    # Without a tokenizer: about 4 characters a token for Latin script, 1 for CJK.
    return max(1, sum(1 if ord(ch) > 0x2E80 else 0.25 for ch in text).__ceil__())


def split_code_blocks(text: str) -> list[tuple[str, bool]]:
    """(chunk, is_code) for fenced code blocks; an unclosed fence runs to the end of the text."""
    out: list[tuple[str, bool]] = []
    pos = 0
    fence_open = re.compile(r"^( {0,3})(`{3,}|~{3,})", re.MULTILINE)
    while True:
        m = fence_open.search(text, pos)
        if m is None:
            break
        start = m.start()
        fence = m.group(2)
        line_end = text.find("\n", m.end())
        if line_end == -1:  # a fence on the last line with nothing after it
            end = len(text)
        else:
            close = re.compile(r"^ {0,3}" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}[ \t]*$", re.MULTILINE)
            c = close.search(text, line_end + 1)
            end = len(text) if c is None else c.end()
        if start > pos:
            out.append((text[pos:start], False))
        out.append((text[start:end], True))
        pos = end
    if pos < len(text):
        out.append((text[pos:], False))
    return out


def _split_long(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> list[tuple[str, bool]]:
    """Cut an over-long paragraph into sentences, and over-long sentences into word chunks."""
    if count_tokens(text) <= max_tokens:
        return [(text, True)]
    parts: list[tuple[str, bool]] = []
    pos = 0
    for m in _SENTENCE_END.finditer(text):
        parts.append((text[pos:m.start(1)], True))
        parts.append((m.group(1), False))
        pos = m.end(1)
    parts.append((text[pos:], True))
    # CJK sentences end without a following space.
    parts2: list[tuple[str, bool]] = []
    for chunk, tr in parts:
        if tr and _CJK_SENTENCE_END.search(chunk[:-1] if chunk else chunk):
            pieces = [p for p in _CJK_SENTENCE_END.split(chunk) if p]
            parts2.extend((p, True) for p in pieces)
        else:
            parts2.append((chunk, tr))
    out: list[tuple[str, bool]] = []
    for chunk, tr in parts2:
        if not tr or count_tokens(chunk) <= max_tokens:
            out.append((chunk, tr))
            continue
        # Greedy word packing; the single spaces between packs stay verbatim.
        words = re.split(r"(\s+)", chunk)
        cur = ""
        for w in words:
            if not w:
                continue
            cand = cur + w
            if cur and not w.isspace() and count_tokens(cand) > max_tokens:
                stripped = cur.rstrip()
                out.append((stripped, True))
                if len(cur) > len(stripped):
                    out.append((cur[len(stripped):], False))
                cur = w
            else:
                cur = cand
        if cur:
            out.append((cur, True))
    return [(c, t) for c, t in out if c]


def _segment_line(line: str, max_tokens: int, count_tokens: Callable[[str], int]) -> list[Piece]:
    pieces: list[Piece] = []
    m = _LINE_PREFIX.match(line)
    prefix = m.group(0) if m else ""
    if prefix:
        pieces.append(Piece(prefix, False))
    rest = line[len(prefix):]
    pos = 0
    spans: list[tuple[str, bool]] = []
    for c in _INLINE_CODE.finditer(rest):
        if c.start() > pos:
            spans.append((rest[pos:c.start()], True))
        spans.append((c.group(0), False))
        pos = c.end()
    if pos < len(rest):
        spans.append((rest[pos:], True))
    if line.lstrip().startswith("|"):
        # A table row: every cell is its own segment, the pipes stay.
        cells: list[tuple[str, bool]] = []
        for chunk, tr in spans:
            if not tr:
                cells.append((chunk, tr))
                continue
            cells.extend((c, not bool(_TABLE_PIPE.fullmatch(c))) for c in _TABLE_PIPE.split(chunk) if c)
        spans = cells
    for chunk, tr in spans:
        if not tr:
            pieces.append(Piece(chunk, False))
            continue
        for sub, sub_tr in _split_long(chunk, max_tokens, count_tokens):
            if not sub_tr:
                pieces.append(Piece(sub, False))
                continue
            # Whitespace around a segment stays verbatim: translators strip it anyway.
            core = sub.strip()
            lead = sub[: len(sub) - len(sub.lstrip())]
            trail = sub[len(sub.rstrip()):]
            if lead:
                pieces.append(Piece(lead, False))
            if core:
                pieces.append(Piece(core, _has_letters(core)))
            if trail and core:
                pieces.append(Piece(trail, False))
    return pieces


def segment_text(
    text: str, max_tokens: int = 200, count_tokens: Callable[[str], int] | None = None
) -> list[Piece]:
    """The pieces of ``text`` in order; their concatenation is exactly ``text``.

    ``max_tokens`` bounds every segment as measured by ``count_tokens`` (the translator's
    tokenizer; default: an estimate of 4 characters a token, 1 per CJK character).
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    count = count_tokens or approx_tokens
    pieces: list[Piece] = []
    for chunk, is_code in split_code_blocks(text):
        if is_code:
            pieces.append(Piece(chunk, False))
            continue
        for line in re.split(r"(\n)", chunk):
            if line == "\n":
                pieces.append(Piece(line, False))
            elif line:
                pieces.extend(_segment_line(line, max_tokens, count))
    # Merge neighbouring verbatim pieces: fewer, clearer pieces; the text is unchanged.
    merged: list[Piece] = []
    for p in pieces:
        if merged and not p.translate and not merged[-1].translate:
            merged[-1] = Piece(merged[-1].text + p.text, False)
        else:
            merged.append(p)
    assert "".join(p.text for p in merged) == text, "segmentation lost text"
    return merged


def segments_of(pieces: list[Piece]) -> list[str]:
    """The texts to translate, in order (with repeats)."""
    return [p.text for p in pieces if p.translate]


def reassemble(pieces: list[Piece], translations: dict[str, str] | Callable[[str], str]) -> str:
    """Put the text back together with every segment replaced by its translation.

    A translation is stripped of surrounding whitespace and of line breaks (a segment is one
    line, and a stray newline would break the markdown structure kept around it).
    """
    get = translations.__getitem__ if isinstance(translations, dict) else translations
    out = []
    for p in pieces:
        if p.translate:
            out.append(" ".join(get(p.text).split()) if "\n" in get(p.text) else get(p.text).strip())
        else:
            out.append(p.text)
    return "".join(out)
