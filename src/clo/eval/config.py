"""Configuration of the evaluation stage (``eval:`` section)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from clo.config_base import StrictModel, registered
from clo.data.config import TranslatorConfig

SYSTEM_PROMPTS = ("none", "answer-in-language")


class JudgeConfig(StrictModel):
    backend: str = Field("openai", description="openai (any OpenAI-compatible endpoint) or local (transformers)")
    model: str = Field("gpt-4o", description="judge model: API model name, or a clo.models spec for local")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. a vLLM server")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    retries: int = Field(2, ge=0, description="extra requests when a verdict cannot be parsed")
    max_tokens: int = Field(128, gt=0)
    timeout: float = Field(120.0, gt=0, description="seconds per request")
    max_retries: int = Field(6, ge=0, description="retries of a request: connection errors, 408/409/429/5xx "
                             "statuses (after Retry-After when given) and bodies that are no chat completion")
    concurrency: int = Field(16, ge=1, description="requests in flight at once (the local backend: 1)")
    prompt: str = Field("clo", description="judge prompt: clo (clo's own), alpaca_eval (AlpacaEval 2's "
                        "make_partial_leaderboard ranking prompt, every language), paper (Appendix C: AlpacaEval's "
                        "prompt for English, prompt_file's text for the other languages)")
    prompt_file: str | None = Field(None, description="paper: the judge prompt for non-English instructions, in "
                                    "alpaca_eval's template format ({instruction}, {output_1}, {output_2})")
    function_calling: bool = Field(True, description="alpaca_eval/paper: the ranking through the "
                                   "make_partial_leaderboard function (false: as JSON text, for endpoints "
                                   "without tools)")
    rpm: int | None = Field(None, gt=0, description="requests per minute at most (null: no cap)")
    tpm: int | None = Field(None, gt=0, description="tokens per minute at most, prompt estimate + max_tokens, "
                            "corrected by the response's usage (null: no cap)")

    @field_validator("prompt")
    @classmethod
    def _known_prompt(cls, v: str) -> str:
        from clo.eval.prompts import JUDGE_PROMPTS

        return registered(v, JUDGE_PROMPTS, "judge prompt")


class VLLMConfig(StrictModel):
    """Settings of the vLLM generation backend (``eval.backend: vllm``)."""

    dtype: str = Field("auto", description="auto (what the transformers backend uses), bfloat16, float16, float32")
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    max_model_len: int | None = Field(None, gt=0, description="None: the model's own context length")
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = Field(False, description="skip CUDA graphs (faster start, slower decoding)")
    chunk_size: int = Field(512, gt=0, description="prompts per vLLM call; each finished chunk is cached")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="further vllm.LLM arguments")


class EvalConfig(StrictModel):
    tasks: list[str] = Field(default_factory=lambda: ["belebele", "mmmlu", "fidelity"])
    data_dir: str | None = Field(None, description="local data directory; None reads the hub")
    limit: int | None = Field(None, gt=0)
    batch_size: int | None = Field(None, gt=0, description="BELEBELE: questions per forward (null: 8); generation: "
                                   "at most this many prompts per batch (null: the token budget alone decides)")
    batch_tokens: int | None = Field(None, gt=0, description="transformers generation: padded prompt + new tokens "
                                     "per batch; null: sized to the device (clo.eval.generation.auto_batch_tokens)")
    max_new_tokens: int = Field(256, gt=0, description="generation budget (AlpacaEval, fidelity, confusion; MMMLU "
                                "when mmmlu_max_new_tokens is null)")
    mmmlu_max_new_tokens: int | None = Field(None, gt=0, description="MMMLU's generation budget (the prompt asks "
                                             "for step-by-step reasoning; the answer line ends it); null: "
                                             "max_new_tokens")
    temperature: float = Field(0.6, ge=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    seed: int = 0
    backend: str = Field("auto", description="generation backend: auto (vllm where it is installed on a CUDA "
                         "machine, else transformers), transformers or vllm")
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    mmmlu_retries: int = Field(3, ge=0, description="MMMLU regenerations when no answer can be extracted")
    translator: TranslatorConfig | None = Field(
        None, description="the translator of the evaluation sets (AlpacaEval instructions); null: data.translator. "
        "The paper translated them with GPT-4o: kind openai, model gpt-4o")
    system_prompt: str = Field("none", description="AlpacaEval answers: none, or answer-in-language (the "
                               "language's answer_in_language text as the system message, as in the paper's "
                               "Table 8)")
    judge: JudgeConfig = Field(default_factory=JudgeConfig)

    @field_validator("system_prompt")
    @classmethod
    def _known_system_prompt(cls, v: str) -> str:
        return registered(v, SYSTEM_PROMPTS, "system prompt")

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        from clo.eval.generation import GENERATION_BACKENDS

        if v == "auto":
            return v
        try:
            return registered(v, GENERATION_BACKENDS, "generation backend")
        except ValueError as e:
            raise ValueError(f"{e} (or auto: vllm where it is installed on a CUDA machine, else transformers)") from None

