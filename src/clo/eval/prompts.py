"""Judge prompt variants for the pairwise AlpacaEval judge (``eval.judge.prompt``).

- ``clo``: clo's own prompt (:mod:`clo.eval.judge`): outputs ``model_1``/``model_2``, a JSON
  ranking list in the text, a sentence for non-English instructions that an answer in another
  language does not follow the instruction.
- ``alpaca_eval``: AlpacaEval 2's ranking prompt (alpaca_eval's ``alpaca_eval_gpt4_turbo_fn``
  evaluator, the prompt the paper's Appendix C builds on): outputs ``m``/``M``, the ranking
  returned through the ``make_partial_leaderboard`` function, parsed as alpaca_eval parses it
  (:func:`parse_leaderboard`). Every language gets this English text.
- ``paper``: the paper's protocol (Appendix C): the original AlpacaEval prompt for English
  instructions; for the other languages the paper adds a sentence on multilinguality to it, whose
  exact text clo does not ship, so it is read from ``eval.judge.prompt_file`` (a template in
  alpaca_eval's format, see :func:`parse_chatml`). Without that file ``paper`` judges English only.

Every variant is recorded in the evaluation's fingerprint (the ``eval.judge`` section) and the
template text's digest in each cached verdict's key, so a changed prompt is judged afresh.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clo.config_base import ConfigError
from clo.languages import Language
from clo.registry import unknown_name_message

JUDGE_PROMPTS = ("clo", "alpaca_eval", "paper")

# alpaca_eval's src/alpaca_eval/evaluators_configs/alpaca_eval_gpt4_turbo_fn/alpaca_eval_fn.txt
# (tatsu-lab/alpaca_eval, Apache-2.0), character for character.
ALPACA_EVAL_FN_TEMPLATE = '''<|im_start|>system
You are a highly efficient assistant, who evaluates and rank large language models (LLMs) based on the quality of their responses to given prompts. This process will create a leaderboard reflecting the most accurate and human-preferred answers.
<|im_end|>
<|im_start|>user
I require a leaderboard for various large language models. I'll provide you with prompts given to these models and their corresponding responses. Your task is to assess these responses, ranking the models in order of preference from a human perspective. Once ranked, please output the results in a structured JSON format for the make_partial_leaderboard function.

## Prompt

{
    "instruction": """{instruction}""",
}

## Model Outputs

Here are the unordered outputs from the models. Each output is associated with a specific model, identified by a unique model identifier.

{
    {
        "model": "m",
        "output": """{output_1}"""
    },
    {
        "model": "M",
        "output": """{output_2}"""
    }
}

## Task

Evaluate and rank the models based on the quality and relevance of their outputs. The ranking should be such that the model with the highest quality output is ranked first.
<|im_end|>'''

# The function the judge is made to call (alpaca_eval's evaluator config, same file's configs.yaml).
MAKE_PARTIAL_LEADERBOARD = {
    "type": "function",
    "function": {
        "name": "make_partial_leaderboard",
        "description": "Make a leaderboard of models given a list of the models ordered by the preference of their "
                       "outputs.",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {
                "ordered_models": {
                    "type": "array",
                    "description": "A list of models ordered by the preference of their outputs. The first model in "
                                   "the list has the best output.",
                    "items": {
                        "type": "object",
                        "properties": {
                            "model": {"type": "string", "description": "The name of the model"},
                            "rank": {"type": "number",
                                     "description": "Order of preference of the model, 1 has the best output"},
                        },
                        "additionalProperties": False,
                        "required": ["model", "rank"],
                    },
                },
            },
            "additionalProperties": False,
            "required": ["ordered_models"],
        },
    },
}

_FIELDS = ("{instruction}", "{output_1}", "{output_2}")


def parse_chatml(text: str, where: str = "judge prompt") -> tuple[str, str]:
    """``(system, user)`` of a template in alpaca_eval's ChatML form
    (``<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n...<|im_end|>``), each content
    stripped as alpaca_eval's ``prompt_to_chatml`` strips it. The user text must hold
    ``{instruction}``, ``{output_1}`` and ``{output_2}``; anything else is a :class:`ConfigError`."""
    body = text.strip()
    if not body.startswith("<|im_start|>") or not body.endswith("<|im_end|>"):
        raise ConfigError(f"{where}: not a template in alpaca_eval's format (it must start with <|im_start|> "
                          "and end with <|im_end|>)")
    roles: dict[str, str] = {}
    for part in body.split("<|im_start|>")[1:]:
        head, _, rest = part.partition("\n")
        roles[head.strip()] = rest.split("<|im_end|>", 1)[0].strip()
    if set(roles) != {"system", "user"}:
        raise ConfigError(f"{where}: expected one system and one user message, got {', '.join(roles) or 'none'}")
    missing = [f for f in _FIELDS if f not in roles["user"]]
    if missing:
        raise ConfigError(f"{where}: the user message lacks {', '.join(missing)}")
    return roles["system"], roles["user"]


def fill(user: str, instruction: str, output_1: str, output_2: str) -> str:
    """The user message: each field's first occurrence replaced by the raw text (alpaca_eval's
    rule: not ``str.format``, whose braces the template uses literally)."""
    for key, value in zip(_FIELDS, (instruction, output_1, output_2)):
        user = user.replace(key, value, 1)
    return user


def parse_leaderboard(text: str, model_1_name: str = "m") -> int | None:
    """1 if ``model_1_name`` ranks first, 2 if it ranks second, None otherwise, as alpaca_eval's
    ``pipeline_meta_parser`` reads a ``make_partial_leaderboard`` answer: ``json_parser`` with
    ``annotation_key="ordered_models"`` (a ```` ```json ```` block is read from inside), then
    ``ranking_parser``, which takes the rank of ``model_1_name`` (1 or 2; a float 1.0 counts as
    1). There are no ties: both ranked 1 reads as 1, as alpaca_eval reads it."""
    if not isinstance(text, str) or text == "":
        return None
    try:
        if "```json" in text:
            text = re.search(r"```json(.*?)```", text, re.DOTALL).group(1)
        loaded = json.loads(text)
        ordered = [loaded["ordered_models"]] if isinstance(loaded, dict) else [d["ordered_models"] for d in loaded]
        if len(ordered) != 1:
            return None
        ranking = ordered[0]
        if isinstance(ranking, str):
            ranking = ast.literal_eval(ranking)
        rank = [c for c in ranking if c["model"] == model_1_name][0]["rank"]
    except Exception:  # noqa: BLE001 - alpaca_eval turns any failure into NaN: no verdict
        return None
    if rank not in (1, 2):
        return None
    return int(rank)


@dataclass(frozen=True)
class JudgePrompt:
    """One judge prompt: its messages, how its answer is read, the function the judge must call."""

    name: str
    system: str
    user: str
    tool: dict | None
    parse: Callable[[str], int | None]

    def messages(self, instruction: str, output_1: str, output_2: str) -> list[dict]:
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": fill(self.user, instruction, output_1, output_2)}]

    @property
    def digest(self) -> str:
        """What the verdict cache keys on: the texts and the function."""
        blob = json.dumps([self.system, self.user, self.tool], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def resolve(judge_cfg, lang: Language) -> JudgePrompt | None:
    """The prompt ``eval.judge.prompt`` names for instructions in ``lang``; None for ``clo`` (the
    judge module's own). ``function_calling: false`` asks for the ranking as text instead of a
    function call (for endpoints without tools); it is read the same way."""
    name = getattr(judge_cfg, "prompt", "clo")
    if name == "clo":
        return None
    if name not in JUDGE_PROMPTS:
        raise ConfigError(f"eval.judge.prompt: {unknown_name_message('prompt', name, JUDGE_PROMPTS)}")
    text, where = ALPACA_EVAL_FN_TEMPLATE, "alpaca_eval_fn"
    prompt_file = getattr(judge_cfg, "prompt_file", None)
    if name == "paper" and lang.code != "en":
        if not prompt_file:
            raise ConfigError(
                f"eval.judge.prompt=paper: the paper's judge prompt for {lang.name} instructions (Appendix C: "
                "AlpacaEval's prompt with a sentence on multilinguality) is not shipped with clo; copy it into "
                "a file in alpaca_eval's template format and set eval.judge.prompt_file, or choose "
                "eval.judge.prompt=alpaca_eval or clo")
        path = Path(prompt_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"eval.judge.prompt_file: {path}: no such file")
        text, where = path.read_text(encoding="utf-8"), str(path)
    system, user = parse_chatml(text, where)
    tool = MAKE_PARTIAL_LEADERBOARD if getattr(judge_cfg, "function_calling", True) else None
    return JudgePrompt(name, system, user, tool, parse_leaderboard)
