"""Pairwise LLM judge (AlpacaEval style) with order randomisation, retries and a verdict cache.

The judge sees a system prompt, the instruction and two anonymous outputs (``model_1``,
``model_2``) and returns a ranking as JSON. Which output is ``model_1`` is decided per item by a
seeded coin (:func:`swap_order`) and undone when scoring. For a non-English instruction the judge
is told to rank an answer written in another language lower. A verdict that cannot be parsed is
asked for again (``retries`` times), then recorded as a failure. Backends (:data:`JUDGES`): any
OpenAI-compatible endpoint, or a local transformers model.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import random
import re
from collections.abc import Callable
from typing import Protocol

from clo.languages import Language

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


def parse_ranking(text: str) -> int | None:
    """1 if ``model_1`` ranks first, 2 if ``model_2`` does, 0 for a tie, None if unparseable."""
    if not isinstance(text, str):
        return None
    m = re.search(r"\[.*\]", text, re.DOTALL)
    if not m:
        return None
    raw = m.group(0)
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        try:
            obj = ast.literal_eval(raw)  # judges sometimes answer with Python literals (single quotes)
        except (ValueError, SyntaxError):
            return None
    if not isinstance(obj, list):
        return None
    ranks = {}
    for entry in obj:
        if not isinstance(entry, dict) or entry.get("model") not in ("model_1", "model_2"):
            return None
        try:
            ranks[entry["model"]] = int(entry["rank"])
        except (KeyError, TypeError, ValueError):
            return None
    if set(ranks) != {"model_1", "model_2"}:
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


class Judge(Protocol):
    name: str

    def __call__(self, messages: list[dict]) -> str: ...


class OpenAIJudge:
    """Any OpenAI-compatible chat endpoint; the key from the environment variable ``api_key_env``."""

    def __init__(self, cfg):
        from openai import OpenAI

        key = os.environ.get(cfg.api_key_env)
        if not key:
            if cfg.base_url is None:
                raise RuntimeError(f"judge: environment variable {cfg.api_key_env} is not set (the OpenAI API key)")
            key = "EMPTY"  # self-hosted OpenAI-compatible servers (vLLM) accept any key
        self.client = OpenAI(base_url=cfg.base_url, api_key=key, timeout=cfg.timeout, max_retries=cfg.max_retries)
        self.model = cfg.model
        self.max_tokens = cfg.max_tokens
        self.name = f"openai:{cfg.model}@{cfg.base_url or 'api.openai.com'}"

    def __call__(self, messages: list[dict]) -> str:
        resp = self.client.chat.completions.create(
            model=self.model, messages=messages, temperature=0.0, max_tokens=self.max_tokens,
        )
        return resp.choices[0].message.content or ""


class LocalJudge:
    """A transformers chat model loaded with clo.models, greedy decoding."""

    def __init__(self, cfg):
        from clo.models import load_model

        self.model, self.tokenizer = load_model(cfg.model)
        self.max_tokens = cfg.max_tokens
        self.name = f"local:{cfg.model}"

    def __call__(self, messages: list[dict]) -> str:
        import torch

        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        ids = {k: v.to(self.model.device) for k, v in ids.items()}
        with torch.inference_mode():
            out = self.model.generate(**ids, do_sample=False, max_new_tokens=self.max_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


JUDGES: dict[str, Callable[[object], Judge]] = {"openai": OpenAIJudge, "local": LocalJudge}


def make_judge(cfg) -> Judge:
    try:
        return JUDGES[cfg.backend](cfg)
    except KeyError:
        raise ValueError(f"unknown judge backend {cfg.backend!r}; known: {', '.join(JUDGES)}") from None


def judge_item(judge: Judge, item_id: str, instruction: str, model_output: str, baseline_output: str,
               lang: Language, *, seed: int, retries: int) -> dict:
    """One verdict: ``{"swapped", "ranking", "score", "raw", "attempts", "failed"}``."""
    swapped = swap_order(seed, item_id)
    out_1, out_2 = (baseline_output, model_output) if swapped else (model_output, baseline_output)
    messages = build_messages(instruction, out_1, out_2, lang)
    raws = []
    for _ in range(retries + 1):
        raw = judge(messages)
        raws.append(raw)
        ranking = parse_ranking(raw)
        if ranking is not None:
            return {"swapped": swapped, "ranking": ranking, "score": score_from_ranking(ranking, swapped),
                    "raw": raws, "attempts": len(raws), "failed": False}
    log.warning("judge: unparseable verdict for item %s after %d attempts", item_id, len(raws))
    return {"swapped": swapped, "ranking": None, "score": None, "raw": raws, "attempts": len(raws), "failed": True}
