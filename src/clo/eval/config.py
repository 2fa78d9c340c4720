"""Configuration of the evaluation stage (``eval:`` section)."""

from __future__ import annotations

from pydantic import Field

from clo.config_base import StrictModel


class JudgeConfig(StrictModel):
    backend: str = Field("openai", description="openai (any OpenAI-compatible endpoint) or local (transformers)")
    model: str = Field("gpt-4o", description="judge model: API model name, or a clo.models spec for local")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. a vLLM server")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    retries: int = Field(2, ge=0, description="extra requests when a verdict cannot be parsed")
    max_tokens: int = Field(128, gt=0)
    timeout: float = Field(120.0, gt=0, description="seconds per request")
    max_retries: int = Field(6, ge=0, description="client retries on rate limits / connection errors")


class EvalConfig(StrictModel):
    tasks: list[str] = Field(default_factory=lambda: ["belebele", "mmmlu", "fidelity"])
    data_dir: str | None = Field(None, description="local data directory; None reads the hub")
    limit: int | None = Field(None, gt=0)
    batch_size: int = Field(8, gt=0)
    max_new_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.6, ge=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    seed: int = 0
    mmmlu_retries: int = Field(3, ge=0, description="MMMLU regenerations when no answer can be extracted")
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
