"""Configuration of the data stage (``data:`` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from clo.config_base import StrictModel


class TranslatorConfig(StrictModel):
    kind: Literal["seq2seq", "causal", "openai", "identity"] = "causal"
    model: str = Field("gemma-3-270m", description="translation model (hub id, path, offline name)")
    base_url: str | None = Field(None, description="openai: OpenAI-compatible endpoint")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable with the key")
    batch_tokens: int = Field(4096, gt=0, description="token budget per translation batch")
    max_segment_tokens: int = Field(200, gt=0)
    concurrency: int = Field(8, gt=0)
    device: str = "auto"


class DataConfig(StrictModel):
    source: Literal["oasst1", "alpaca", "chat"] = "alpaca"
    path: str | None = Field(None, description="local file/dir; None reads the hub")
    n: int = Field(6400, gt=0, description="number of English examples")
    translator: TranslatorConfig = Field(default_factory=TranslatorConfig)
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    subsets: list[int] = Field(default_factory=lambda: [200, 400, 800, 1600, 3200, 6400])
    seed: int = 0
    cache: str | None = Field(None, description="translation cache (SQLite); None: <output_dir>/translations.sqlite")
