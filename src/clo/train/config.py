"""Configuration of the training stage (``train:`` section); defaults are the paper's (Appendix B)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from clo.config_base import StrictModel
from clo.registry import unknown_name_message


class TrainConfig(StrictModel):
    method: Literal["sft", "sft-eng", "sft-tgt", "dpo", "sft+dpo", "clo"] = "clo"
    lam: float = Field(0.5, ge=0.0, le=1.0, description="weight of the target NLL in the CLO loss")
    beta: float = Field(0.1, gt=0.0)
    cl_loss: Literal["sigmoid", "ipo", "hinge", "robust", "orpo", "simpo"] = Field(
        "sigmoid", description="preference term of the CLO loss (method clo): sigmoid (the paper), ipo, hinge, robust; "
        "reference-free (no reference pass): orpo, simpo")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="ε, the assumed rate of flipped preferences: "
                                   "cl_loss robust (required > 0) and simpo (CPO's smoothing) only")
    simpo_gamma: float = Field(0.5, ge=0.0, description="SimPO's target margin γ (TRL's simpo_gamma)")
    lr: float = Field(5e-5, gt=0.0)
    min_lr: float = Field(1.1e-6, ge=0.0)
    batch_size: int = Field(8, gt=0, description="examples (quadruples) per optimiser step")
    micro_batch_size: int | None = Field(None, gt=0, description="units per forward/backward (null: no cap)")
    max_tokens_per_micro_batch: int | None = Field(
        None, gt=0, description="tokens per forward/backward; units are never split. null: 16384 on a GPU, "
        "no cap on a CPU")
    max_length: int = Field(3000, gt=0)
    epochs: float = Field(1.0, gt=0.0)
    trainable: str = Field("attention", description="attention | full | lora | a regular expression")
    nll_langs: list[Literal["tgt", "en"]] = Field(default_factory=lambda: ["tgt"])
    nll_reduction: Literal["token", "sequence"] = Field(
        "token", description="L_SFT's normaliser: token (the batch's NLL over its response tokens, TRL's "
        "reading) or sequence (the paper's eq. 9 as written: each sequence's summed NLL, averaged over sequences)")
    batch_unit: Literal["unit", "example"] = Field(
        "unit", description="what batch_size counts: unit (a method's training unit: a quadruple for clo, one "
        "row for sft, a preference pair for dpo) or example (parallel examples: every unit of each example, so "
        "sft takes as many steps as clo)")
    eval_every: int = Field(50, gt=0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    live_reference: bool = False
    gradient_checkpointing: bool | Literal["auto"] = Field("auto", description="auto: on for a GPU, off on a CPU")
    master_weights: Literal["float32", "none"] = Field(
        "float32", description="float32: trainable parameters, gradients and AdamW state in fp32 while the "
        "matmuls run in train.dtype; none: everything in train.dtype (updates below half a bf16 step are lost)")
    sharding: Literal["auto", "none", "fsdp2"] = Field(
        "auto", description="auto: FSDP2 when `accelerate launch` was given an FSDP config, else none (DDP "
        "over several processes); fsdp2 forces it (e.g. on CPU processes, where accelerate cannot)")
    keep_state: bool = Field(False, description="keep last/state.pt (trainable tensors, AdamW moments, RNG) "
                             "after the run finishes; by default a finished run keeps best/ only, since the "
                             "state serves resumption alone and is larger than the trained weights")
    process_group_timeout_s: int = Field(
        1800, gt=0, description="seconds a collective may wait for the slowest process before the run fails "
        "(torch.distributed's timeout; NCCL's default of 600 s is short for writing an 8B model's state)")
    save: Literal["full", "trained"] = Field(
        "full", description="what best/ holds: full (a complete transformers checkpoint) or trained (the trained "
        "tensors and the base model's identity; a full model is materialised once, in $CLO_CACHE, when an "
        "evaluation or a later stage loads it). Not with trainable: lora (its adapter is already small)")
    lora_r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="gradient clipping; null disables")
    pack_length: int | None = Field(
        None, gt=0, description="tokens per packed row; null: one row with flash/flex attention, "
        "else rows as long as the batch's longest sequence (mask-based attention is quadratic in row length)")
    logit_chunk: int = Field(1024, gt=0, description="response tokens per LM-head chunk")
    tokenwise_chunk: int | None = Field(
        None, gt=0, description="tokens per chunk of the blocks that act on each token alone (MLP, RMSNorm), each "
        "chunk checkpointed: the backward holds one chunk's MLP activations instead of the micro-batch's (exact; "
        "one more forward of these blocks, about a fifth more compute). 2048 brings Llama-3-8B with attention "
        "trained and 16,384 tokens per micro-batch under 34 GiB; null: off")
    attn_implementation: str | None = Field(None, description="eager | sdpa | flash_attention_2 | flex_attention")
    reference_cache: str | None = Field(None, description="directory of cached reference log-probs "
                                        "(default $CLO_CACHE/reference)")
    drift_prompts: int = Field(8, ge=0, description="held-out prompts per language answered greedily at every "
                               "validation, to log language drift and echoes (0: off; not under FSDP2)")
    drift_max_new_tokens: int = Field(32, gt=0)
    log_every: int = Field(10, gt=0, description="steps between console lines (the JSON log has every step)")
    report_to: Literal["none"] | list[Literal["tensorboard", "wandb"]] = Field(
        "none", description="metrics trackers beside the JSON log (log.jsonl, always written): none, tensorboard, "
        "wandb or a list of both; a tracker whose package is missing is an error at start-up")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker_or_a_list(cls, v):
        # `report_to: wandb` and `--set train.report_to=wandb` mean [wandb]; [] and [none] mean none.
        if v is None:
            return "none"
        if isinstance(v, str):
            v = [v]
        if isinstance(v, (list, tuple)):
            unknown = [x for x in v if x not in ("none", "tensorboard", "wandb")]
            if unknown:
                raise ValueError(unknown_name_message("tracker", unknown[0], ["none", "tensorboard", "wandb"]))
            v = list(dict.fromkeys(x for x in v if x != "none"))
            return v or "none"
        return v

    @model_validator(mode="after")
    def _trained_only_needs_named_tensors(self):
        if self.save == "trained" and self.trainable == "lora":
            raise ValueError("train.save=trained with train.trainable=lora: LoRA's best/adapter/ is already the "
                             "small form; use save: full")
        return self

    @model_validator(mode="after")
    def _smoothing_has_a_use(self):
        # A smoothing the chosen term ignores would silently change nothing; robust without one is sigmoid.
        if self.cl_loss == "robust" and self.label_smoothing == 0.0:
            raise ValueError("train.cl_loss=robust needs train.label_smoothing in (0, 0.5); with 0 it is sigmoid")
        if self.label_smoothing > 0.0 and self.cl_loss not in ("robust", "simpo"):
            raise ValueError(f"train.label_smoothing={self.label_smoothing} has no effect with "
                             f"train.cl_loss={self.cl_loss!r} (used by robust and simpo only)")
        return self
