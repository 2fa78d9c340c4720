"""A misspelt name in the evaluation and launcher registries is answered with the closest known
name and the list of known ones (clo.registry's one message), at each place a user can name one."""

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from clo import languages
from clo.config_base import ConfigError
from clo.eval import belebele, fidelity, judge, prompts
from clo.eval.config import EvalConfig, JudgeConfig
from clo.eval.generation import make_generator
from clo.experiments.launchers import get_launcher
from clo.registry import UnknownName


def _generator(backend):
    return make_generator(backend, spec=None, load_model=lambda: None, tokenizer=None, eval_cfg=None,
                          workdir=None)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: _generator("vlm"),
     "unknown generation backend 'vlm'; did you mean 'vllm'? known: transformers, vllm"),
    (lambda: belebele.render({}, languages.get("de"), "nativ"),
     "unknown BELEBELE template 'nativ'; did you mean 'native'? known: native, harness"),
    (lambda: judge.make_judge(SimpleNamespace(backend="opnai")),
     "unknown judge backend 'opnai'; did you mean 'openai'? known: openai, local"),
    (lambda: fidelity._source({"source": "held_out"}),
     "fidelity: unknown source 'held_out'; did you mean 'held-out'? known: auto, lcb, held-out"),
    (lambda: fidelity.load_lcb(".", "de", split="monolingal"),
     "unknown split 'monolingal'; did you mean 'monolingual'? known: monolingual, crosslingual, all"),
    (lambda: get_launcher("slurn"),
     "unknown launcher 'slurn'; did you mean 'slurm'? known: local, slurm"),
])
def test_unknown_name_suggests_the_closest(call, message):
    with pytest.raises(UnknownName) as e:
        call()
    assert str(e.value) == message
    assert isinstance(e.value, ValueError) and isinstance(e.value, KeyError)  # what callers caught before


def test_unknown_name_far_from_every_known_one_lists_them_without_a_guess():
    with pytest.raises(UnknownName) as e:
        get_launcher("pbs")
    assert str(e.value) == "unknown launcher 'pbs'; known: local, slurm"


def test_judge_prompt_resolution_suggests_the_closest():
    with pytest.raises(ConfigError) as e:
        prompts.resolve(SimpleNamespace(prompt="alpaca-eval"), languages.get("de"))
    assert str(e.value) == ("eval.judge.prompt: unknown prompt 'alpaca-eval'; did you mean 'alpaca_eval'? "
                            "known: clo, alpaca_eval, paper")


@pytest.mark.parametrize(("build", "message"), [
    (lambda: JudgeConfig(prompt="papr"), "unknown judge prompt 'papr'; did you mean 'paper'? known: clo, alpaca_eval, paper"),
    (lambda: EvalConfig(system_prompt="answer-in-languag"),
     "unknown system prompt 'answer-in-languag'; did you mean 'answer-in-language'? known: none, answer-in-language"),
])
def test_config_validators_suggest_the_closest(build, message):
    with pytest.raises(ValidationError) as e:
        build()
    assert message in str(e.value)
