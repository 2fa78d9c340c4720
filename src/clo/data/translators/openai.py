"""``openai``: an OpenAI-compatible chat endpoint, one request per segment, ``concurrency`` at a
time, each retried on its own (:class:`OpenAITranslator`)."""

from __future__ import annotations

import email.utils
import json
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from clo import languages
from clo.data.checks import segment_failure
from clo.data.translators.base import (
    SegmentFailure,
    TranslationError,
    Translator,
    brief,
    fingerprint_string,
    log,
)

if TYPE_CHECKING:
    from clo.data.config import TranslatorConfig

# Bump when SYSTEM_PROMPT changes.
SYSTEM_PROMPT_VERSION = 1

SYSTEM_PROMPT = (
    "You are a professional translator. Translate the user's text from {src} to {tgt}. Keep the "
    "meaning, tone and formatting. Reply with the translation only: no notes, no quotes, no preamble."
)

# Statuses worth another try, as the official client has them: request timeout, lock conflict,
# rate limit, server errors. Other 4xx concern the one request (too long, filtered): it fails.
_RETRY_STATUS = frozenset({408, 409, 429})
# Statuses that say the configuration is wrong: every request would fail the same way.
_FATAL_STATUS = frozenset({401, 403, 404})


class _FailedAttempt(Exception):
    """One request that gave no translation: the failure kind, whether to try again, and the
    delay the server asked for (Retry-After)."""

    def __init__(self, kind: str, detail: str, *, retry: bool = True, retry_after: float | None = None):
        super().__init__(detail)
        self.kind, self.detail, self.retry, self.retry_after = kind, detail, retry, retry_after


def retry_after_seconds(headers) -> float | None:
    """The server's ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), or None."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / scale)
        except ValueError:
            pass
        if name == "retry-after":
            try:
                return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError, IndexError):
                return None
    return None


_brief = brief


class OpenAITranslator(Translator):
    """One chat request per segment, ``concurrency`` in flight, each retried on its own.

    The retry loop is ours, not the official client's (it runs with ``max_retries=0``): the
    client retries HTTP errors but returns malformed, HTML, empty and null answers as if they
    were translations, and it does not say how many requests it sent. Here every failed attempt
    (HTTP 408/409/429/5xx, timeout, connection error, a body that is not a chat completion, null
    or empty content, the segment echoed) waits ``INITIAL_BACKOFF * 2**k`` seconds (at most
    ``MAX_BACKOFF``, with jitter), or what the server's Retry-After says, and tries again,
    ``max_retries`` times; then the segment fails (:class:`SegmentFailure`) and the build goes on
    without its record. Another 4xx concerns the one request (too long, filtered): no retry.
    401/403/404 stop the run: the endpoint, model or key is wrong for every segment alike; so do
    ``GIVE_UP_AFTER`` segments in a row failing with errors (an endpoint that is down would
    otherwise take hours of backoff to fail every segment of a large build).
    """

    kind = "openai"
    INITIAL_BACKOFF = 0.5  # seconds; the official client's defaults
    MAX_BACKOFF = 8.0
    MAX_RETRY_AFTER = 120.0  # a server asking for longer is waited on this long, then retried
    GIVE_UP_AFTER = 32

    def __init__(self, cfg: TranslatorConfig):
        super().__init__(cfg)
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise TranslationError(
                f"the openai translator reads its API key from ${cfg.api_key_env}, which is not set"
            )
        from openai import OpenAI

        self.endpoint = cfg.base_url or "https://api.openai.com/v1"
        self.client = OpenAI(base_url=cfg.base_url, api_key=key, max_retries=0, timeout=cfg.timeout)
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._fatal: TranslationError | None = None  # set by a 401/403/404: send nothing more
        self._errors_in_a_row = 0

    def fingerprint(self) -> str:
        # The model and the prompt, not the endpoint's address: the same model behind
        # localhost or 127.0.0.1 (or a proxy) translates alike; nor the key, timeouts,
        # retries or concurrency.
        return fingerprint_string("openai", {"model": self.cfg.model, "prompt": SYSTEM_PROMPT_VERSION,
                                             "t": 0})

    def request_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def _count(self, **amounts: int) -> None:
        with self._lock:
            self._counts.update(amounts)

    def _delay(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.MAX_RETRY_AFTER)
        return min(self.INITIAL_BACKOFF * 2.0 ** retry, self.MAX_BACKOFF) * (1 - 0.25 * random.random())

    def _one(self, text: str, src: str, tgt: str) -> str | SegmentFailure:
        attempts = 1 + self.cfg.max_retries
        for k in range(attempts):
            if self._fatal is not None:
                raise self._fatal
            self._count(requests=1, retries=int(k > 0))
            try:
                answer = self._request(text, src, tgt)
            except _FailedAttempt as e:
                failed = e
                if not e.retry or k + 1 == attempts:
                    break
                time.sleep(self._delay(k, e.retry_after))
            else:
                self._errors_in_a_row = 0
                return answer
        n = k + 1
        self._note_failure(failed)
        log.warning("%s: no translation of a %d-character segment after %d request%s: %s", self.endpoint,
                    len(text), n, "s" * (n > 1), failed.detail)
        return SegmentFailure(failed.kind, f"{self.endpoint}: {failed.detail} (after {n} request{'s' * (n > 1)})")

    def _note_failure(self, failed: _FailedAttempt) -> None:
        with self._lock:
            self._errors_in_a_row = self._errors_in_a_row + 1 if failed.kind == "error" else 0
            if self._errors_in_a_row >= self.GIVE_UP_AFTER and self._fatal is None:
                self._fatal = TranslationError(
                    f"{self.endpoint}: the last {self._errors_in_a_row} segments all failed (last: {failed.detail}); "
                    "stopping. The translations so far are cached: run again when the endpoint works"
                )

    def _request(self, text: str, src: str, tgt: str) -> str:
        import openai

        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=self.cfg.model, temperature=0,
                messages=[{"role": "system", "content": SYSTEM_PROMPT.format(src=src, tgt=tgt)},
                          {"role": "user", "content": text}],
            )
        except openai.APITimeoutError:
            raise _FailedAttempt("error", f"no answer within {self.cfg.timeout:g} s") from None
        except openai.APIConnectionError as e:
            raise _FailedAttempt("error", f"connection failed ({e.__cause__ or e})") from None
        except openai.APIStatusError as e:
            raise self._status_failure(e) from None
        answer = self._content(raw.text, raw.headers)
        # A server that misbehaves now and then may echo one request and translate the next.
        if segment_failure(text, answer, echo=self.echo_is_failure) == "echo":
            raise _FailedAttempt("echo", "the segment came back unchanged", retry_after=retry_after_seconds(raw.headers))
        return answer

    def _status_failure(self, e) -> _FailedAttempt:
        status = e.status_code
        body = _brief(getattr(e.response, "text", ""))
        if status in _FATAL_STATUS:
            self._fatal = TranslationError(
                f"{self.endpoint}: HTTP {status} for model {self.cfg.model!r} ({body}); check "
                f"data.translator.base_url, data.translator.model and the key in ${self.cfg.api_key_env}"
            )
            raise self._fatal
        retry = status in _RETRY_STATUS or status >= 500
        return _FailedAttempt("error", f"HTTP {status} {body}", retry=retry,
                              retry_after=retry_after_seconds(e.response.headers))

    def _content(self, body: str, headers) -> str:
        """The translation in a chat completion body; anything else is a failed attempt."""
        wait = retry_after_seconds(headers)
        try:
            obj = json.loads(body)
        except ValueError as e:
            ctype = headers.get("content-type", "no content type") if headers is not None else "?"
            raise _FailedAttempt("error", f"malformed response ({ctype}, {e}): {_brief(body)}",
                                 retry_after=wait) from None
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if isinstance(usage, dict):
            self._count(**{k: usage[k] for k in _USAGE_KEYS if isinstance(usage.get(k), int)})
        try:
            content = obj["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _FailedAttempt("error", f"response without choices[0].message.content: {_brief(body)}",
                                 retry_after=wait) from None
        if content is None:
            raise _FailedAttempt("empty", "null content", retry_after=wait)
        if not isinstance(content, str):
            raise _FailedAttempt("error", f"content is a {type(content).__name__}, not text", retry_after=wait)
        if not content.strip():
            raise _FailedAttempt("empty", f"empty content {content!r}", retry_after=wait)
        return content.strip()

    def translate_batch(self, texts, src_lang, tgt_lang):
        src, tgt = languages.get(src_lang).name, languages.get(tgt_lang).name
        self._fatal, self._errors_in_a_row = None, 0
        pool = ThreadPoolExecutor(max_workers=self.cfg.concurrency)
        try:
            return list(pool.map(lambda t: self._one(t, src, tgt), texts))
        finally:
            # After a fatal answer (401/403/404) the requests still queued are not sent.
            pool.shutdown(wait=True, cancel_futures=True)


_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")
