"""The entry points: segment, deduplicate, batch by length, cache, check every segment.

See :mod:`clo.data.translators` for how a call runs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from clo import languages
from clo.data.cache import TranslationCache
from clo.data.checks import segment_failure
from clo.data.segment import Piece, reassemble, segment_text, segments_of
from clo.data.translators.base import SegmentFailure, TranslationError, Translator, brief
from clo.data.translators.kinds import make_translator

if TYPE_CHECKING:
    from clo.data.config import TranslatorConfig


@dataclass
class TranslationStats:
    texts: int = 0
    segments: int = 0  # translatable segments, with repeats
    unique_segments: int = 0
    cache_hits: int = 0  # unique segments found in the cache
    translated: int = 0  # unique segments translated in this call
    failed: int = 0  # unique segments without a usable translation in this call
    failures: dict = field(default_factory=dict)  # kind -> failed unique segments
    batches_run: int = 0
    requests: int = 0  # endpoint translators: HTTP requests sent, retries included
    retries: int = 0
    usage: dict = field(default_factory=dict)  # endpoint translators: prompt/completion/total tokens
    batch_tokens: int = 0  # padded source tokens per batch (data.translator.batch_tokens or the device's)
    seconds: float = 0.0
    translate_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def segments_per_second(self) -> float:
        return self.translated / self.translate_seconds if self.translate_seconds else 0.0

    def add_requests(self, before: dict[str, int], after: dict[str, int]) -> None:
        """Add what an endpoint translator counted between two :meth:`Translator.request_counts`."""
        delta = {k: v - before.get(k, 0) for k, v in after.items()}
        self.requests += delta.pop("requests", 0)
        self.retries += delta.pop("retries", 0)
        for k, v in delta.items():
            self.usage[k] = self.usage.get(k, 0) + v

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d["failures"] = dict(sorted(self.failures.items()))
        d["usage"] = dict(sorted(self.usage.items()))
        d["segments_per_second"] = round(self.segments_per_second, 3)
        d["seconds"] = round(self.seconds, 3)
        d["translate_seconds"] = round(self.translate_seconds, 3)
        return d


@dataclass
class Translated:
    """One text's translation: ``text`` is None when any of its segments failed (``failures``:
    segment -> why); a text is never returned half translated."""

    text: str | None
    failures: dict[str, SegmentFailure] = field(default_factory=dict)


def plan_batches(lengths: dict[str, int], batch_tokens: int, batch_size: int) -> list[list[str]]:
    """Pack segments, sorted by (token length, text), into batches.

    A batch holds at most ``batch_size`` segments and ``n * max_len <= batch_tokens`` padded
    source tokens (a single segment longer than the budget is a batch of its own). The plan is a
    pure function of its input: the same segments always give the same batches.
    """
    order = sorted(lengths, key=lambda s: (lengths[s], s))
    batches: list[list[str]] = []
    cur: list[str] = []
    for s in order:
        n = len(cur) + 1
        if cur and (n > batch_size or n * lengths[s] > batch_tokens):
            batches.append(cur)
            cur = []
        cur.append(s)
    if cur:
        batches.append(cur)
    return batches


def _checked(tr: Translator, batch: list[str], outs: list) -> tuple[dict[str, str], dict[str, SegmentFailure]]:
    """Split a batch's outputs into usable translations and failures, segment by segment."""
    if len(outs) != len(batch):
        raise TranslationError(f"{tr.kind} returned {len(outs)} translations for {len(batch)} segments")
    good: dict[str, str] = {}
    bad: dict[str, SegmentFailure] = {}
    for seg, out in zip(batch, outs):
        if isinstance(out, SegmentFailure):
            bad[seg] = out
            continue
        if out is not None and not isinstance(out, str):
            raise TranslationError(f"{tr.kind} returned a {type(out).__name__} for a segment, not text")
        kind = segment_failure(seg, out or "", echo=tr.echo_is_failure)
        if kind is None:
            good[seg] = out
        else:
            what = "an empty translation" if kind == "empty" else "the segment unchanged"
            bad[seg] = SegmentFailure(kind, f"{tr.kind} returned {what}")
    return good, bad


def translate_all(
    texts: list[str],
    src_lang: str,
    tgt_lang: str,
    translator: TranslatorConfig | Translator,
    cache_path: str | Path,
    *,
    progress: bool = True,
    stats: TranslationStats | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[Translated]:
    """Translate ``texts`` from ``src_lang`` to ``tgt_lang`` (ISO 639-1), one :class:`Translated`
    per input: the text, or None and the failed segments.

    Segments, deduplicates, batches by length and caches (see the module docstring). Pass a
    :class:`Translator` instead of its config to reuse a loaded model across calls; from a
    config the model is loaded only when some segment is not cached yet. ``stats`` (optional)
    is filled in; ``on_batch(done, total)`` is called after each translated batch.
    """
    t0 = time.perf_counter()
    for code in (src_lang, tgt_lang):
        languages.get(code)  # an unknown code fails here, naming the known ones
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise TypeError("translate_texts expects a list of str")
    st = stats if stats is not None else TranslationStats()
    own = not isinstance(translator, Translator)
    tr = make_translator(translator) if own else translator
    cfg = tr.cfg
    fp = tr.fingerprint()
    length_cache: dict[str, int] = {}

    def count(s: str) -> int:
        if s not in length_cache:
            length_cache[s] = tr.count_tokens(s)
        return length_cache[s]

    pieces: list[list[Piece]] = [segment_text(t, cfg.max_segment_tokens, count) for t in texts]
    all_segments = [s for p in pieces for s in segments_of(p)]
    unique = list(dict.fromkeys(all_segments))
    st.texts += len(texts)
    st.segments += len(all_segments)
    st.unique_segments += len(unique)
    failed: dict[str, SegmentFailure] = {}
    counts_before = tr.request_counts()
    with TranslationCache(cache_path) as cache:
        cached = cache.get_many(fp, src_lang, tgt_lang, unique)
        done = cached  # only checked translations are ever cached
        st.cache_hits += len(done)
        plan = []
        if any(s not in done for s in unique):
            # The plan covers every unique segment, cached or not, so that a resumed run redoes
            # the unfinished batches with the composition they had.
            st.batch_tokens = tr.batch_tokens()
            plan = plan_batches({s: count(s) for s in unique}, st.batch_tokens, cfg.batch_size)
        todo = [[s for s in b if s not in done] for b in plan]
        todo = [b for b in todo if b]
        bar = None
        if progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(unique), initial=len(done), unit="seg", desc=f"translate {src_lang}->{tgt_lang}",
                       dynamic_ncols=True)
        try:
            for i, batch in enumerate(todo):
                t1 = time.perf_counter()
                good, bad = _checked(tr, batch, tr.translate_batch(batch, src_lang, tgt_lang))
                cache.put_many(fp, src_lang, tgt_lang, good)
                done.update(good)
                failed.update(bad)
                st.translate_seconds += time.perf_counter() - t1
                st.translated += len(good)
                st.failed += len(bad)
                for f in bad.values():
                    st.failures[f.kind] = st.failures.get(f.kind, 0) + 1
                st.batches_run += 1
                if bar is not None:
                    bar.update(len(batch))
                    bar.set_postfix(hits=st.cache_hits, failed=st.failed, seg_s=f"{st.segments_per_second:.2f}")
                if on_batch is not None:
                    on_batch(i + 1, len(todo))
        finally:
            if bar is not None:
                bar.close()
            st.add_requests(counts_before, tr.request_counts())
            if own:
                tr.close()
    st.seconds += time.perf_counter() - t0
    return [_assemble(p, done, failed) for p in pieces]


def _assemble(pieces: list[Piece], done: dict[str, str], failed: dict[str, SegmentFailure]) -> Translated:
    bad = {s: failed[s] for s in segments_of(pieces) if s in failed}
    return Translated(None, bad) if bad else Translated(reassemble(pieces, done))


def translate_texts(
    texts: list[str],
    src_lang: str,
    tgt_lang: str,
    translator: TranslatorConfig | Translator,
    cache_path: str | Path,
    *,
    progress: bool = True,
    stats: TranslationStats | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[str]:
    """:func:`translate_all` for callers that need every text: one translated text per input.

    Raises :class:`TranslationError` when a segment has no usable translation, after the whole
    input has been tried; the translations that succeeded are cached, so running again asks
    only for the failed segments.
    """
    results = translate_all(texts, src_lang, tgt_lang, translator, cache_path, progress=progress, stats=stats,
                            on_batch=on_batch)
    failures = {s: f for r in results for s, f in r.failures.items()}
    if failures:
        seg, first = next(iter(failures.items()))
        kinds = Counter(f.kind for f in failures.values())
        raise TranslationError(
            f"{len(failures)} segment(s) have no usable translation ({dict(sorted(kinds.items()))}); first: "
            f"{brief(seg, 40)}: {first.kind}, {first.detail}. The others are cached: run again to retry these."
        )
    return [r.text for r in results]
