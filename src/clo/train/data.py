"""Cross-lingual records -> token ids of the four sequences, with rejection reasons.

Every record becomes an :class:`EncodedExample` holding ``(prompt_ids, response_ids)`` for each
key ``en_en``, ``en_tgt``, ``tgt_tgt``, ``tgt_en`` (``<prompt lang>_<response lang>``), tokenised
by :func:`clo.formatting.encode_pair`, the formatting evaluation uses too. Responses longer than
``max_length`` minus the prompt are cut at the end (counted); a record whose prompt alone does
not fit, or whose language is not the run's, is rejected with its id and the reason.

With several target languages (``lang: [sw, yo]``) the records are
:class:`~clo.data.records.MultilingualRecord` s and the keys name the languages:
:func:`multilingual_keys` gives ``en_en`` and, per language ``l``, ``en_l``, ``l_l``, ``l_en``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from clo.data.records import CrossLingualRecord, MultilingualRecord, read_multilingual, read_records
from clo.errors import CloError
from clo.formatting import PromptTooLong, encode_pair

log = logging.getLogger(__name__)

# key -> (prompt field, response field)
SEQUENCES = {
    "en_en": ("x_en", "y_en"),
    "en_tgt": ("x_en", "y_tgt"),
    "tgt_tgt": ("x_tgt", "y_tgt"),
    "tgt_en": ("x_tgt", "y_en"),
}


def multilingual_keys(langs: list[str]) -> tuple[str, ...]:
    """The ``1 + 3k`` sequence keys of an example with ``k`` target languages: ``en_en`` (shared
    by every language's English-prompt term), then ``en_l``, ``l_l``, ``l_en`` per language."""
    return ("en_en", *(k for lang in langs for k in (f"en_{lang}", f"{lang}_{lang}", f"{lang}_en")))


def _texts(rec, key: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """((prompt field, prompt text), (response field, response text)) of ``key`` in a record."""
    if isinstance(rec, MultilingualRecord):
        p, r = key.split("_")
        pf, rf = (f"x_{p}" if p == "en" else f"tgt.{p}.x_tgt"), (f"y_{r}" if r == "en" else f"tgt.{r}.y_tgt")
        return (pf, rec.text("x", p)), (rf, rec.text("y", r))
    pf, rf = SEQUENCES[key]
    return (pf, getattr(rec, pf)), (rf, getattr(rec, rf))


@dataclass
class EncodedExample:
    id: str
    seqs: dict[str, tuple[list[int], list[int]]]
    truncated: set[str] = field(default_factory=set)

    def length(self, key: str) -> int:
        p, r = self.seqs[key]
        return len(p) + len(r)


@dataclass
class EncodedDataset:
    path: str
    examples: list[EncodedExample]
    rejected: list[dict]  # {"id", "line", "reason"}
    truncated: dict[str, int]  # key -> number of truncated responses
    keys: tuple[str, ...] = tuple(SEQUENCES)  # every example's keys: the reference cache's columns

    def fingerprint(self) -> str:
        """A hash of exactly the token ids that are scored: the data part of the reference cache key."""
        h = hashlib.sha256()
        for ex in self.examples:
            h.update(ex.id.encode())
            for key in self.keys:
                p, r = ex.seqs[key]
                h.update(json.dumps([p, r], separators=(",", ":")).encode())
        return h.hexdigest()


class DatasetError(CloError, ValueError):
    """A training dataset that cannot be used; the message names the file."""


def encode_records(
    records: list[CrossLingualRecord] | list[MultilingualRecord], tokenizer, max_length: int,
    lang: str | list[str] | None = None, path: str = "<memory>", keys: tuple[str, ...] | None = None,
) -> EncodedDataset:
    """``lang`` a list of two or more codes: multilingual records, keys :func:`multilingual_keys`."""
    multi = isinstance(lang, list) and len(lang) > 1
    if isinstance(lang, list) and not multi:
        lang = lang[0] if lang else None
    keys = tuple(keys) if keys is not None else (multilingual_keys(lang) if multi else tuple(SEQUENCES))
    examples, rejected = [], []
    truncated = {k: 0 for k in keys}
    for line, rec in enumerate(tqdm(records, desc=f"tokenising {Path(path).name}", unit="ex", leave=False), 1):
        if multi and not isinstance(rec, MultilingualRecord):
            raise DatasetError(f"{path}: record {rec.id!r} is a single-language record; lang {lang} needs "
                               "multilingual records (docs/data.md)")
        if multi and any(c not in rec.tgt for c in lang):
            rejected.append({"id": rec.id, "line": line, "field": "tgt",
                             "reason": f"no translation into {[c for c in lang if c not in rec.tgt]}"})
            continue
        if not multi and lang is not None and rec.tgt_lang != lang:
            rejected.append({"id": rec.id, "line": line, "field": "tgt_lang",
                             "reason": f"tgt_lang is {rec.tgt_lang!r}, the run's language is {lang!r}"})
            continue
        seqs, cut, reason = {}, set(), None
        for key in keys:
            (pf, prompt), (rf, response) = _texts(rec, key)
            try:
                enc = encode_pair(tokenizer, prompt, response, max_length)
            except PromptTooLong as e:
                reason = {"id": rec.id, "line": line, "field": pf, "reason": f"{pf}: {e}"}
                break
            if not enc.response_ids:
                reason = {"id": rec.id, "line": line, "field": rf, "reason": f"{rf}: response has no tokens"}
                break
            seqs[key] = (enc.prompt_ids, enc.response_ids)
            if enc.truncated:
                cut.add(key)
        if reason is not None:
            rejected.append(reason)
            continue
        for key in cut:
            truncated[key] += 1
        examples.append(EncodedExample(rec.id, seqs, cut))
    for r in rejected:
        log.warning("%s:%s: rejected record %r: %s", path, r["line"], r["id"], r["reason"])
    if any(truncated.values()):
        log.info("%s: responses truncated to max_length %d: %s", path, max_length, truncated)
    if not examples:
        raise DatasetError(f"{path}: no usable records ({len(rejected)} rejected; first: "
                           f"{rejected[0]['reason'] if rejected else 'file is empty'})")
    return EncodedDataset(path, examples, rejected, truncated, keys)


def load_dataset(path: str | Path, tokenizer, max_length: int, lang: str | list[str] | None = None) -> EncodedDataset:
    """Read (JSONL/Parquet, validated by :func:`clo.data.records.read_records`, or
    :func:`~clo.data.records.read_multilingual` for a list of languages) and encode."""
    if isinstance(lang, list) and len(lang) > 1:
        return encode_records(read_multilingual(path, lang), tokenizer, max_length, lang, str(path))
    return encode_records(read_records(path), tokenizer, max_length, lang, str(path))
