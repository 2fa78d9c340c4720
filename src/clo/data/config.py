"""Configuration of the data stage (``data:`` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from clo.config_base import StrictModel, registered


class TranslatorConfig(StrictModel):
    kind: str = Field("causal", description="translator registry name: seq2seq, causal, openai, identity")
    model: str = Field("gemma-3-270m", description="translation model (hub id, path, offline name)")
    backend: Literal["auto", "transformers", "ctranslate2"] = Field(
        "auto", description="seq2seq runtime: auto takes CTranslate2 when installed"
    )
    base_url: str | None = Field(None, description="openai: OpenAI-compatible endpoint")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable with the key")
    batch_tokens: int = Field(4096, gt=0, description="token budget per translation batch (padded source tokens)")
    batch_size: int = Field(128, gt=0, description="at most this many segments per batch")
    max_segment_tokens: int = Field(200, gt=0)
    max_new_tokens_ratio: float = Field(2.0, gt=0, description="generated tokens <= ratio * source tokens + extra")
    max_new_tokens_extra: int = Field(16, ge=0)
    concurrency: int = Field(8, gt=0, description="openai: requests in flight")
    max_retries: int = Field(6, ge=0, description="openai: retries on 429 / 5xx / connection errors")
    timeout: float = Field(120.0, gt=0, description="openai: seconds per request")
    prefix_cache: bool = Field(True, description="causal: compute the few-shot prefix once per language pair")
    device: str = "auto"
    dtype: str = Field("auto", description="auto, float32, bfloat16, float16")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        from clo.data.translate import TRANSLATORS

        return registered(v, sorted(TRANSLATORS), "translator kind")


class ChecksConfig(StrictModel):
    """Quality checks on every translated record (clo.data.checks)."""

    langid: bool = Field(True, description="x_tgt and y_tgt must be detected as the target language")
    langid_min_letters: int = Field(8, ge=0, description="texts with fewer letters are undecidable (pass)")
    length_ratio_min: float = Field(0.4, gt=0, description="min of len(tgt)/len(en) / expected ratio")
    length_ratio_max: float = Field(2.5, gt=0, description="max of len(tgt)/len(en) / expected ratio")
    length_ratio_min_chars: int = Field(20, ge=0, description="English texts shorter than this skip the ratio check")
    repetition_ngram: int = Field(10, gt=0, description="character n-gram size of the repetition measure")
    repetition_max: float = Field(0.5, ge=0, le=1, description="max duplicate n-gram share of a translation")
    repetition_margin: float = Field(0.2, ge=0, le=1, description="allowed excess over the English text's share")


class DataConfig(StrictModel):
    source: Literal["oasst1", "alpaca", "chat"] = "alpaca"
    path: str | None = Field(None, description="local file/dir; None reads the hub")
    n: int = Field(6400, gt=0, description="number of English examples")
    max_chars: int | None = Field(None, gt=0, description="take only pairs with len(x_en) + len(y_en) <= this")
    translator: TranslatorConfig = Field(default_factory=TranslatorConfig)
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    subsets: list[int] = Field(default_factory=lambda: [200, 400, 800, 1600, 3200, 6400])
    seed: int = 0
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
