"""Configuration of the evaluation stage (``eval:`` section)."""

from __future__ import annotations

from pydantic import Field

from clo.config_base import StrictModel


class JudgeConfig(StrictModel):
    model: str = "gpt-4o"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"


class EvalConfig(StrictModel):
    tasks: list[str] = Field(default_factory=lambda: ["belebele", "mmmlu", "fidelity"])
    data_dir: str | None = Field(None, description="local data directory; None reads the hub")
    limit: int | None = Field(None, gt=0)
    batch_size: int = Field(8, gt=0)
    max_new_tokens: int = Field(256, gt=0)
    temperature: float = Field(0.6, ge=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    seed: int = 0
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
