"""Configuration of the data stage (``data:`` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from clo.config_base import StrictModel, registered


class TranslatorConfig(StrictModel):
    kind: str = Field("causal", description="translator registry name: seq2seq, causal, openai, identity")
    model: str = Field("gemma-3-270m", description="translation model (hub id, path, offline name; seq2seq: also "
                       "a directory made by ct2-transformers-converter)")
    tokenizer: str | None = Field(None, description="seq2seq: the tokenizer, where the model directory has none "
                                  "(a CTranslate2 conversion without --copy_files); None: the model's")
    backend: Literal["auto", "transformers", "ctranslate2"] = Field(
        "auto", description="seq2seq runtime: auto takes CTranslate2 when installed"
    )
    base_url: str | None = Field(None, description="openai: OpenAI-compatible endpoint")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable with the key")
    batch_tokens: int | None = Field(None, gt=0, description="padded source tokens per translation batch; None: "
                                     "chosen for the device (4096 on a CPU, from free memory on a GPU)")
    batch_size: int = Field(128, gt=0, description="at most this many segments per batch")
    max_segment_tokens: int = Field(200, gt=0)
    max_new_tokens_ratio: float = Field(2.0, gt=0, description="generated tokens <= ratio * source tokens + extra")
    max_new_tokens_extra: int = Field(16, ge=0)
    concurrency: int = Field(8, gt=0, description="openai: requests in flight")
    max_retries: int = Field(6, ge=0, description="openai: retries on 429 / 5xx / connection errors")
    timeout: float = Field(120.0, gt=0, description="openai: seconds per request")
    prefix_cache: bool = Field(True, description="causal: compute the few-shot prefix once per language pair")
    few_shot: str | dict[str, list[str]] | None = Field(
        None, description="causal: few-shot examples for any language: a file (.yaml/.json {code: [sentences]}, "
        ".jsonl one parallel example per line) or such a mapping; over the built-in ones")
    device: str = "auto"
    dtype: str = Field("auto", description="auto, float32, bfloat16, float16; CTranslate2 also int8, int8_float16, "
                       "... (auto: float16 on a GPU, int8 on a CPU; transformers: bfloat16 on a GPU, else float32)")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        from clo.data.translators import TRANSLATORS

        return registered(v, sorted(TRANSLATORS), "translator kind")


class ChecksConfig(StrictModel):
    """Quality checks on every translated record (clo.data.checks)."""

    langid: bool = Field(True, description="x_tgt and y_tgt must be detected as the target language")
    langid_min_letters: int = Field(8, ge=0, description="texts with fewer letters are undecidable (pass)")
    langid_min_words: int = Field(3, ge=0, description="texts of a script written with spaces and fewer words "
                                  "are undecidable (pass): 'Mieux dormir.', 'Lehrmaterial'")
    langid_min_prob: float = Field(0.05, ge=0, le=1, description="reject only when the detector gives the target "
                                   "language less than this probability")
    numbers: bool = Field(True, description="the numbers of the English text must be in the translation")
    numbers_max_missing: float = Field(0.5, ge=0, le=1, description="reject when more than this share of the "
                                       "English text's numbers is missing from the translation")
    adequacy_model: str | None = Field(None, description="a multilingual sentence encoder (sentence-transformers "
                                       "name or directory, e.g. sentence-transformers/LaBSE): reject translations "
                                       "whose cosine similarity to their source is below adequacy_min")
    adequacy_min: float = Field(0.5, ge=-1, le=1, description="the adequacy check's cosine-similarity threshold")
    length_ratio_min: float = Field(0.4, gt=0, description="min of len(tgt)/len(en) / expected ratio")
    length_ratio_max: float = Field(2.5, gt=0, description="max of len(tgt)/len(en) / expected ratio")
    length_ratio_min_chars: int = Field(20, ge=0, description="English texts shorter than this skip the ratio check")
    repetition_ngram: int = Field(10, gt=0, description="character n-gram size of the repetition measure")
    repetition_max: float = Field(0.5, ge=0, le=1, description="max duplicate n-gram share of a translation")
    repetition_margin: float = Field(0.2, ge=0, le=1, description="allowed excess over the English text's share")


class ColumnsConfig(StrictModel):
    """``data.columns``: the column of your data that holds each field clo reads, where the names
    differ (``{instruction: question, output: answer}``); unset fields keep their own names."""

    id: str | None = None
    instruction: str | None = Field(None, description="alpaca: the instruction")
    input: str | None = Field(None, description="alpaca: the optional input, after a blank line")
    output: str | None = Field(None, description="alpaca: the response")
    system: str | None = Field(None, description="a system prompt (dropped, or prepended: data.system_prompt)")
    history: str | None = Field(None, description="alpaca: earlier [instruction, response] turns")
    messages: str | None = Field(None, description="chat: OpenAI messages [{role, content}]")
    conversations: str | None = Field(None, description="chat: ShareGPT conversations [{from, value}]")
    prompt: str | None = Field(None, description="trl: the prompt (a string or messages)")
    completion: str | None = Field(None, description="trl: the completion")
    chosen: str | None = Field(None, description="trl: the preferred completion")
    x_en: str | None = Field(None, description="parallel: the English instruction")
    y_en: str | None = Field(None, description="parallel: the English response")
    x_tgt: str | None = Field(None, description="parallel: the translated instruction")
    y_tgt: str | None = Field(None, description="parallel: the translated response")
    tgt_lang: str | None = Field(None, description="parallel: the target language")


class DataConfig(StrictModel):
    source: Literal["auto", "oasst1", "alpaca", "chat", "sharegpt", "trl", "parallel"] = Field(
        "alpaca", description="the format of the rows (clo.data.sources); auto: told by each row's keys")
    path: str | None = Field(None, description="local file/dir or hub dataset id; None reads the hub (oasst1)")
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    split: str = Field("train", description="the split of a hub dataset or a dataset directory")
    hub_config: str | None = Field(None, description="the config (subset) of a hub dataset")
    system_prompt: Literal["drop", "prepend"] = Field(
        "drop", description="system prompts: drop (the paper's single turn) or put before the instruction")
    history: Literal["drop", "prepend"] = Field(
        "drop", description="Alpaca history (the turns before a row's own pair): drop, or put before the "
        "instruction as a User:/Assistant: transcript")
    n: int = Field(6400, gt=0, description="number of English examples")
    max_chars: int | None = Field(None, gt=0, description="take only pairs with len(x_en) + len(y_en) <= this")
    translator: TranslatorConfig = Field(default_factory=TranslatorConfig)
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    subsets: list[int] = Field(default_factory=lambda: [200, 400, 800, 1600, 3200, 6400])
    seed: int = 0
    mmmlu_format_items: int = Field(0, ge=0, description="MMMLU questions added to training to teach the answer "
                                    "format (the paper's Appendix D: 10), each in English and the target language; "
                                    "the MMMLU evaluation leaves them out")
    format: Literal["jsonl", "parquet"] = Field("jsonl", description="dataset file format")
    cache: str | None = Field(None, description="translation cache (SQLite); None: <output_dir>/translations.sqlite")

    @field_validator("subsets")
    @classmethod
    def _positive_sorted(cls, v: list[int]) -> list[int]:
        if any(s <= 0 for s in v):
            raise ValueError(f"subset sizes must be positive, got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _ratio_bounds(self) -> DataConfig:
        if self.checks.length_ratio_min >= self.checks.length_ratio_max:
            raise ValueError("checks.length_ratio_min must be below checks.length_ratio_max")
        return self
