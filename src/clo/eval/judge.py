"""Pairwise LLM judge (AlpacaEval style) with order randomisation and retries.

The judge sees a system prompt, the instruction and two anonymous outputs (``model_1``,
``model_2``) and returns a ranking as JSON. Which output is ``model_1`` is decided per item by a
seeded coin (:func:`swap_order`) and undone when scoring. For a non-English instruction the judge
is told to rank an answer written in another language lower. Only the ranking in the format asked
for counts (:func:`parse_ranking`); another answer is asked for again (``retries`` times), then
recorded as a failure, as is an endpoint that gives no usable response (:class:`JudgeError`).
Backends (:data:`JUDGES`): any OpenAI-compatible endpoint, or a local transformers model.

:func:`judge_items` judges many items with up to ``concurrency`` requests in flight (the first item
alone, so that a refused key ends the run after one request); each verdict is the one
:func:`judge_item` gives for that item alone. The OpenAI judge keeps to ``rpm`` and ``tpm`` caps
(:class:`RateLimiter`) and retries transient failures itself, after the server's Retry-After when
it sends one; a 429 holds back every request of the run, not only the refused one.
"""

from __future__ import annotations

import ast
import contextlib
import email.utils
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Protocol

from clo.config_base import ConfigError
from clo.languages import Language
from clo.registry import Registry

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a helpful assistant that ranks AI models by the quality of their answers to an instruction. "
    "You are fair and unbiased: the order in which the answers are shown and their length do not matter, "
    "only how well they follow the instruction."
)

USER_TEMPLATE = """I want you to rank the outputs of two models for the instruction below. Choose the output that \
follows the instruction best and is the most helpful, accurate and harmless.{language_rule}

## Instruction

{{"instruction": {instruction}}}

## Model outputs

{{
    "model_1": {output_1},
    "model_2": {output_2}
}}

## Your task

Return the ranking as JSON and nothing else: a list with one object per model, the better model with rank 1:
[{{"model": "model_1", "rank": 1}}, {{"model": "model_2", "rank": 2}}]
Give both models rank 1 only if they are equally good."""

LANGUAGE_RULE = (
    "\n\nThe instruction is written in {name}. A response that is not written in {name} does not follow the "
    "instruction: rank it below a response written in {name}."
)


def build_messages(instruction: str, output_1: str, output_2: str, lang: Language) -> list[dict]:
    rule = "" if lang.code == "en" else LANGUAGE_RULE.format(name=lang.name)
    user = USER_TEMPLATE.format(
        language_rule=rule, instruction=json.dumps(instruction, ensure_ascii=False),
        output_1=json.dumps(output_1, ensure_ascii=False), output_2=json.dumps(output_2, ensure_ascii=False),
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# The judge was asked for the ranking and nothing else. Only that is read: the whole answer, or the
# whole answer inside one code fence. A ranking found somewhere inside a longer answer is most often
# the example of the prompt echoed back, and reading it gave echoed prompts wins and losses.
_FENCED_RE = re.compile(r"```[A-Za-z]*[ \t]*\n?(.*?)\s*```", re.DOTALL)

# Reasoning models answer through OpenAI-compatible servers with their reasoning first, in a
# tagged block (DeepSeek-R1, Qwen3, QwQ: <think>; others <thinking>, <reasoning>, <reflection>).
# It is not the answer: removed before the answer is read. Servers whose chat template opens the
# block in the prompt send only its end (``...</think>``: everything up to it goes); a block cut
# off by max_tokens has no end (everything after its start goes, leaving no ranking to read).
_REASONING_TAGS = r"(?:think|thinking|reasoning|reflection)"
_REASONING_BLOCK_RE = re.compile(rf"<{_REASONING_TAGS}>.*?</{_REASONING_TAGS}>", re.DOTALL | re.IGNORECASE)
_REASONING_END_RE = re.compile(rf"^.*</{_REASONING_TAGS}>", re.DOTALL | re.IGNORECASE)
_REASONING_OPEN_RE = re.compile(rf"<{_REASONING_TAGS}>.*\Z", re.DOTALL | re.IGNORECASE)


def strip_reasoning(text: str) -> str:
    """``text`` without its reasoning blocks: closed ones, a leading one whose start was in the
    prompt, and an unterminated one (with everything after it)."""
    text = _REASONING_BLOCK_RE.sub("", text)
    text = _REASONING_END_RE.sub("", text)
    return _REASONING_OPEN_RE.sub("", text)


def _literal(text: str):
    """The JSON (or Python literal: judges sometimes answer with single quotes) ``text`` holds, else None."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested deeper than Python's stack
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _ranks(obj) -> dict[str, int] | None:
    """``{"model_1": r1, "model_2": r2}`` from a ranking list with exactly one entry per model, ranks 1 or 2."""
    if not isinstance(obj, list) or len(obj) != 2:
        return None
    ranks: dict[str, int] = {}
    for entry in obj:
        if not isinstance(entry, dict):
            return None
        model, rank = entry.get("model"), entry.get("rank")
        # type(...) is int: True == 1, and "1" is not the format asked for
        if model not in ("model_1", "model_2") or model in ranks or type(rank) is not int or rank not in (1, 2):
            return None
        ranks[model] = rank
    return ranks if 1 in ranks.values() else None


def parse_ranking(text: str) -> int | None:
    """1 if ``model_1`` ranks first, 2 if ``model_2`` does, 0 for a tie (both rank 1), None when the
    answer is not the ranking asked for: the whole answer (or the whole answer in one code fence)
    must be ``[{"model": "model_1", "rank": r1}, {"model": "model_2", "rank": r2}]`` in either order,
    once reasoning blocks (:func:`strip_reasoning`) are removed."""
    if not isinstance(text, str):
        return None
    body = strip_reasoning(text).strip()
    fenced = _FENCED_RE.fullmatch(body)
    ranks = _ranks(_literal(fenced.group(1) if fenced else body))
    if ranks is None:
        return None
    if ranks["model_1"] == ranks["model_2"]:
        return 0
    return 1 if ranks["model_1"] < ranks["model_2"] else 2


def swap_order(seed: int, item_id: str) -> bool:
    """True when the baseline is shown as ``model_1`` for this item (a seeded fair coin)."""
    return random.Random(f"{seed}:{item_id}").random() < 0.5


def score_from_ranking(ranking: int, swapped: bool) -> float:
    """The model's score: 1 win, 0.5 tie, 0 loss, with the display order undone."""
    if ranking == 0:
        return 0.5
    model_position = 2 if swapped else 1
    return 1.0 if ranking == model_position else 0.0


class JudgeError(RuntimeError):
    """No verdict for one item from the judge's endpoint (an unusable response, a refused request).

    The item counts as a failed judgment of this run and is judged again on the next one."""


class Judge(Protocol):
    name: str

    # ``tool`` (only passed when the prompt has a function to call): the judge must answer by
    # calling it, and returns the call's arguments.
    def __call__(self, messages: list[dict], tool: dict | None = None) -> str: ...


# A failed request (a 200 response whose body is no chat completion, a connection error, a 408,
# 409, 429 or 5xx status) is asked for again up to ``max_retries`` times: after the server's
# Retry-After when it sends one (at most RETRY_AFTER_MAX_S), else after BACKOFF_S seconds,
# doubling up to BACKOFF_MAX_S.
BACKOFF_S = 1.0
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 300.0
_sleep = time.sleep  # replaced in tests


class _BadBody(Exception):
    """The endpoint answered, but not with a chat completion."""


class _Transient(Exception):
    """A failure worth another request: a connection error or a 408, 409, 429 or 5xx status."""

    def __init__(self, message: str, retry_after: float | None, rate_limited: bool):
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited


def retry_after(headers) -> float | None:
    """Seconds the server asks to wait (``retry-after-ms``, or ``retry-after`` in seconds or as an
    HTTP date), at most :data:`RETRY_AFTER_MAX_S`; None when it names no wait."""
    if headers is None:
        return None
    seconds = None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        with contextlib.suppress(ValueError):
            seconds = float(ms) / 1000
    ra = headers.get("retry-after")
    if seconds is None and ra is not None:
        try:
            seconds = float(ra)
        except ValueError:
            try:
                seconds = email.utils.parsedate_to_datetime(ra).timestamp() - time.time()
            except (TypeError, ValueError, IndexError, OverflowError):
                seconds = None
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)  # a date in the past: now


class RateLimiter:
    """Requests per minute and tokens per minute, shared by every thread of one judge.

    Token buckets refilled continuously, holding at most one second's allowance (providers enforce
    per-minute limits over shorter windows too): a request waits until a request is available and
    the token bucket is not in debt, then takes its estimated tokens (which may put the bucket in
    debt: a large request delays the next ones). :meth:`settle` replaces an estimate by the tokens
    the response reports; :meth:`pause` holds every request back until a time (a 429's Retry-After).
    ``clock`` and ``sleep`` are replaceable for tests.
    """

    def __init__(self, rpm: int | None = None, tpm: int | None = None, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.rpm, self.tpm = rpm, tpm
        self._clock, self._sleep_fn = clock, sleep
        self._lock = threading.Lock()
        self._req_cap = max(1.0, rpm / 60) if rpm else 0.0
        self._tok_cap = max(1.0, tpm / 60) if tpm else 0.0
        self._req, self._tok = self._req_cap, self._tok_cap
        self._t = clock()
        self._resume_at = 0.0

    def _refill(self, now: float) -> None:
        dt, self._t = max(0.0, now - self._t), now
        if self.rpm:
            self._req = min(self._req_cap, self._req + dt * self.rpm / 60)
        if self.tpm:
            self._tok = min(self._tok_cap, self._tok + dt * self.tpm / 60)

    def _wait(self, tokens: int) -> float:
        """0 after taking one request and ``tokens`` tokens; else the seconds to wait first."""
        now = self._clock()
        self._refill(now)
        if now < self._resume_at:
            return self._resume_at - now
        if self.rpm and self._req < 1:
            return (1 - self._req) * 60 / self.rpm
        if self.tpm and self._tok <= 0:
            return (1e-9 - self._tok) * 60 / self.tpm
        if self.rpm:
            self._req -= 1
        if self.tpm:
            self._tok -= tokens
        return 0.0

    def acquire(self, tokens: int = 0) -> float:
        """Block until one request of ``tokens`` tokens may go; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                wait = self._wait(tokens)
            if wait <= 0:
                return waited
            self._sleep_fn(wait)
            waited += wait

    def settle(self, estimated: int, actual: int) -> None:
        if self.tpm:
            with self._lock:
                self._tok += estimated - actual

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._resume_at = max(self._resume_at, self._clock() + seconds)


def estimate_tokens(messages: list[dict], max_tokens: int) -> int:
    """Tokens a request may count against a tokens-per-minute limit: its UTF-8 bytes / 3 (about a
    token in English text and a character in Chinese or Korean; generous for both), 4 a message,
    plus the completion's ``max_tokens``."""
    text_bytes = sum(len(str(m.get("content", "")).encode("utf-8")) for m in messages)
    return text_bytes // 3 + 4 * len(messages) + max_tokens


def _content(resp) -> str:
    """The answer text of a chat completion; for anything else (the openai client hands back the
    text of a non-JSON body as is) a :class:`_BadBody` that quotes the start of it."""
    try:
        content = resp.choices[0].message.content
    except (AttributeError, TypeError, IndexError, KeyError):
        raise _BadBody(f"not a chat completion: {str(resp)[:120]!r}") from None
    if content is not None and not isinstance(content, str):
        raise _BadBody(f"message content is a {type(content).__name__}, not text")
    return content or ""


def _tool_arguments(resp) -> str:
    """The arguments of the first tool call of a chat completion (the message text when the
    endpoint answered without calling the function)."""
    try:
        calls = resp.choices[0].message.tool_calls
    except (AttributeError, TypeError, IndexError, KeyError):
        raise _BadBody(f"not a chat completion: {str(resp)[:120]!r}") from None
    if not calls:
        return _content(resp)
    args = getattr(getattr(calls[0], "function", None), "arguments", None)
    if not isinstance(args, str):
        raise _BadBody("a tool call without arguments")
    return args


def _status(e) -> str:
    """An openai error on one line: the HTTP status and the server's message, or the start of the
    page it sent (a proxy's HTML page says what went wrong)."""
    body = getattr(e, "body", None)
    detail = body if isinstance(body, str) and body else str(getattr(e, "message", e))
    detail = " ".join(re.sub(r"^Error code: \d+( - )?", "", detail).split())[:200]
    code = getattr(e, "status_code", None)
    if code is None:
        return f"{type(e).__name__}: {detail}"
    return f"HTTP {code}: {detail}" if detail else f"HTTP {code}"


class OpenAIJudge:
    """Any OpenAI-compatible chat endpoint; the key from the environment variable ``api_key_env``.

    Thread-safe: :func:`judge_items` calls it from several threads, which share one HTTP client and
    one :class:`RateLimiter` (``rpm``, ``tpm``). A refused key, a forbidden or unknown model or path
    ends the run with a :class:`ConfigError`: no item could be judged. Transient failures are
    retried (``max_retries``); what still fails is a :class:`JudgeError` for that item."""

    def __init__(self, cfg):
        from openai import OpenAI

        key = os.environ.get(cfg.api_key_env)
        if not key:
            if cfg.base_url is None:
                raise ConfigError(f"judge: environment variable {cfg.api_key_env} is not set (the OpenAI API key)")
            key = "EMPTY"  # self-hosted OpenAI-compatible servers (vLLM) accept any key
        # Retries are made here, not by the client: a 429's wait then holds back every thread.
        self.client = OpenAI(base_url=cfg.base_url, api_key=key, timeout=cfg.timeout, max_retries=0)
        self.model = cfg.model
        self.max_tokens = cfg.max_tokens
        self.max_retries = cfg.max_retries
        self.api_key_env = cfg.api_key_env
        self.endpoint = cfg.base_url or "https://api.openai.com/v1"
        self.name = f"openai:{cfg.model}@{cfg.base_url or 'api.openai.com'}"
        self.limiter = RateLimiter(getattr(cfg, "rpm", None), getattr(cfg, "tpm", None))

    def __call__(self, messages: list[dict], tool: dict | None = None) -> str:
        delay = BACKOFF_S
        estimate = estimate_tokens(messages, self.max_tokens)
        for attempt in range(self.max_retries + 1):
            self.limiter.acquire(estimate)
            try:
                content, used = self._request(messages, tool)
            except _BadBody as e:
                problem, failure = str(e), None
                wait = delay
                if attempt < self.max_retries:
                    log.warning("judge endpoint %s: %s; asking again in %.1f s", self.endpoint, problem, wait)
            except _Transient as e:
                problem, failure = str(e), e
                wait = e.retry_after if e.retry_after is not None else delay
                if e.rate_limited:
                    self.limiter.pause(wait)  # every thread waits, in acquire
                if attempt < self.max_retries:
                    log.info("judge endpoint %s: %s; asking again in %.1f s", self.endpoint, problem, wait)
            else:
                if used is not None:
                    self.limiter.settle(estimate, used)
                return content
            if attempt == self.max_retries:
                break
            if failure is None or not failure.rate_limited:
                _sleep(wait)
            delay = min(2 * delay, BACKOFF_MAX_S)
        if failure is not None:
            raise JudgeError(f"judge endpoint {self.endpoint}: {problem}")
        raise JudgeError(f"judge endpoint {self.endpoint}: {problem} ({self.max_retries + 1} attempts)")

    def _request(self, messages: list[dict], tool: dict | None = None) -> tuple[str, int | None]:
        """The answer text and the tokens the response says it used (None when it does not say).
        With ``tool`` the judge must call that function; its arguments (JSON) are the answer,
        as alpaca_eval reads a function-calling evaluator's completion."""
        import openai
        import pydantic

        extra = {} if tool is None else {
            "tools": [tool], "tool_choice": {"type": "function", "function": {"name": tool["function"]["name"]}}}
        try:
            resp = self.client.chat.completions.create(
                model=self.model, messages=messages, temperature=0.0, max_tokens=self.max_tokens, **extra,
            )
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            raise ConfigError(f"judge endpoint {self.endpoint} refused model {self.model!r} ({_status(e)}); check "
                              f"eval.judge.base_url, eval.judge.model and ${self.api_key_env}") from None
        except openai.APIResponseValidationError as e:
            raise _BadBody(_status(e)) from None
        except openai.APIConnectionError as e:  # and timeouts
            raise _Transient(_status(e), None, rate_limited=False) from None
        except openai.APIStatusError as e:
            headers = getattr(getattr(e, "response", None), "headers", None)
            should = (headers.get("x-should-retry") if headers is not None else None) or ""
            transient = e.status_code in (408, 409, 429) or e.status_code >= 500
            if should.lower() in ("true", "false"):
                transient = should.lower() == "true"
            if transient:
                raise _Transient(_status(e), retry_after(headers), rate_limited=e.status_code == 429) from None
            raise JudgeError(f"judge endpoint {self.endpoint}: {_status(e)}") from None
        except openai.APIError as e:
            raise JudgeError(f"judge endpoint {self.endpoint}: {_status(e)}") from None
        except (json.JSONDecodeError, pydantic.ValidationError) as e:
            raise _BadBody(f"malformed JSON body ({' '.join(str(e).split())[:160]})") from None
        content = _content(resp) if tool is None else _tool_arguments(resp)
        total = getattr(getattr(resp, "usage", None), "total_tokens", None)
        return content, total if type(total) is int else None


class LocalJudge:
    """A transformers chat model loaded with clo.models, greedy decoding; one request at a time."""

    max_concurrency = 1

    def __init__(self, cfg):
        from clo.models import load_model

        self.model, self.tokenizer = load_model(cfg.model)
        self.max_tokens = cfg.max_tokens
        self.name = f"local:{cfg.model}"

    def __call__(self, messages: list[dict], tool: dict | None = None) -> str:
        # A local model calls no functions: it is asked for the ranking in the text (``tool`` is
        # not passed to its chat template), which the prompt's parser reads the same way.
        import torch

        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        ids = {k: v.to(self.model.device) for k, v in ids.items()}
        with torch.inference_mode():
            out = self.model.generate(**ids, do_sample=False, max_new_tokens=self.max_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


JUDGES: Registry[Callable[[object], Judge]] = Registry("judge backend", {"openai": OpenAIJudge, "local": LocalJudge})


def make_judge(cfg) -> Judge:
    return JUDGES.get(cfg.backend)(cfg)


def judge_item(judge: Judge, item_id: str, instruction: str, model_output: str, baseline_output: str,
               lang: Language, *, seed: int, retries: int, prompt=None) -> dict:
    """One verdict: ``{"swapped", "ranking", "score", "raw", "attempts", "failed", "error"}``.

    ``raw`` holds every answer received (``attempts`` of them); an answer that is not the ranking
    asked for is requested again up to ``retries`` times. A failed verdict (``error`` says why) is
    not final: the caller judges the item again on its next run. ``prompt`` is a
    :class:`clo.eval.prompts.JudgePrompt` (None: this module's own prompt and parser); its
    function, when it has one, is passed to the judge as ``tool``."""
    swapped = swap_order(seed, item_id)
    out_1, out_2 = (baseline_output, model_output) if swapped else (model_output, baseline_output)
    if prompt is None:
        messages, parse, extra = build_messages(instruction, out_1, out_2, lang), parse_ranking, {}
    else:
        messages = prompt.messages(instruction, out_1, out_2)
        extra = {"tool": prompt.tool} if prompt.tool is not None else {}

        def parse(text):
            return prompt.parse(strip_reasoning(text).strip()) if isinstance(text, str) else None
    raws: list[str] = []
    try:
        for _ in range(retries + 1):
            raws.append(judge(messages, **extra))
            ranking = parse(raws[-1])
            if ranking is not None:
                return {"swapped": swapped, "ranking": ranking, "score": score_from_ranking(ranking, swapped),
                        "raw": raws, "attempts": len(raws), "failed": False, "error": None}
        error = f"no ranking in the format asked for in {len(raws)} answer(s)"
    except JudgeError as e:
        error = str(e)
    log.warning("judge: item %s failed: %s", item_id, error)
    return {"swapped": swapped, "ranking": None, "score": None, "raw": raws, "attempts": len(raws),
            "failed": True, "error": error}


def judge_items(judge: Judge, items: Sequence[tuple[str, str, str, str]], lang: Language, *, seed: int,
                retries: int, concurrency: int = 1, prompt=None) -> Iterator[tuple[int, dict]]:
    """Verdicts of ``items`` (``(item_id, instruction, model_output, baseline_output)``) as they
    come: ``(index into items, verdict of judge_item)``, in completion order.

    Up to ``concurrency`` items are judged at once (at most the judge's ``max_concurrency``); the
    first item is judged alone, so that a refused key or an unknown model stops the run after one
    request. A verdict depends on its item alone, so the verdicts are those of a sequential run.
    An exception (a :class:`ConfigError`) cancels the items not yet started and waits for those
    in flight."""

    def one(k: int) -> dict:
        item_id, instruction, model_output, baseline_output = items[k]
        return judge_item(judge, item_id, instruction, model_output, baseline_output, lang, seed=seed,
                          retries=retries, prompt=prompt)

    workers = min(concurrency, getattr(judge, "max_concurrency", concurrency), len(items))
    if workers <= 1:
        for k in range(len(items)):
            yield k, one(k)
        return
    yield 0, one(0)
    failed = threading.Event()

    def guarded(k: int) -> dict | None:
        if failed.is_set():
            return None  # another item raised: this one is not sent
        try:
            return one(k)
        except BaseException:
            failed.set()
            raise

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge")
    try:
        futures = {pool.submit(guarded, k): k for k in range(1, len(items))}
        for f in as_completed(futures):
            verdict = f.result()
            if verdict is not None:
                yield futures[f], verdict
    finally:
        # On an error (or the caller stopping early) the items not yet started are not sent; the
        # requests in flight (at most ``workers``) are waited for.
        pool.shutdown(wait=True, cancel_futures=True)
