"""Fixtures shared by the test modules: the shared data directory, a tiny tokenizer, and for the
training tests a tiny random Llama with random German quadruples over a ten-word vocabulary."""

import random
import shutil
from pathlib import Path

import pytest

from clo.io import write_jsonl
from clo.paths import shared_data_dir

EN = ["the", "cat", "dog", "house", "red", "blue", "runs", "sleeps", "what", "is"]
DE = ["der", "die", "das", "Katze", "Hund", "Haus", "rot", "blau", "läuft", "Frage"]


@pytest.fixture(scope="session")
def shared_data():
    try:
        return shared_data_dir()
    except FileNotFoundError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def tiny_tok():
    from clo.testing import tiny_tokenizer

    return tiny_tokenizer()


def _quadruples(n: int, seed: int, prefix: str = "r") -> list[dict]:
    rng = random.Random(seed)

    def s(words, k):
        return " ".join(rng.choice(words) for _ in range(k))

    return [{"id": f"{prefix}{i}", "tgt_lang": "de", "x_en": s(EN, 4), "y_en": s(EN, 5), "x_tgt": s(DE, 4),
             "y_tgt": s(DE, 6)} for i in range(n)]


@pytest.fixture(scope="session")
def quadruples():
    """``quadruples(n, seed, prefix="r")``: ``n`` German records with ids ``<prefix><i>``, the same
    for the same seed (prompts of 4 words, responses of 5 (English) and 6 (German))."""
    return _quadruples


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny random Llama (vocabulary 512, seed 0) and the tiny tokenizer, saved once a session."""
    from clo.testing import tiny_model, tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", vocab_size=512).save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory, tiny_llama):
    """``tiny_workdir(name, train=rows, val=rows, ...)``: a fresh directory holding ``model/`` (a copy
    of :func:`tiny_llama`) and one ``<key>.jsonl`` per keyword argument."""

    def make(name: str, **files: list[dict]) -> Path:
        d = tmp_path_factory.mktemp(name)
        shutil.copytree(tiny_llama, d / "model")
        for stem, rows in files.items():
            write_jsonl(d / f"{stem}.jsonl", rows)
        return d

    return make
