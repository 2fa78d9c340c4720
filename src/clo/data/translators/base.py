"""What every translator shares: the base class, failures, the cache key, the batch budget."""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from clo.errors import CloError

if TYPE_CHECKING:
    from clo.data.config import TranslatorConfig

log = logging.getLogger("clo.data.translate")

# Bump when a translator's prompt or decoding changes: the cache must not serve old outputs.
PROMPT_VERSION = 1

# Padded source tokens per batch where the device does not decide it: a CPU, and the
# translators without a local model (openai, identity).
DEFAULT_BATCH_TOKENS = 4096
# A GPU budget is rounded down to a power of two in [MIN, the batch_size cap], so that small
# changes in free memory give the same batches (a resumed run then redoes the same batches).
MIN_BATCH_TOKENS = 512
GIB = 1 << 30


class TranslationError(CloError, RuntimeError):
    """A translator that cannot run (a bad model, key or endpoint); the message says which."""


@dataclass(frozen=True)
class SegmentFailure:
    """A segment without a usable translation; never cached, and its record is rejected.

    ``kind``: ``empty`` (nothing came back), ``echo`` (the source came back), ``error`` (the
    request failed: HTTP status, timeout, malformed body); ``detail`` says what exactly.
    """

    kind: str
    detail: str


def brief(body: str, n: int = 60) -> str:
    """The start of a response body, for a message that should fit on one line."""
    text = " ".join(str(body).split())
    return repr(text[:n] + ("..." if len(text) > n else ""))


def resolve_device(spec: str) -> str:
    if spec != "auto":
        return spec
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cuda_memory(device: str) -> tuple[int, int]:
    """(free, total) bytes of a CUDA device (``torch.cuda.mem_get_info``); tests replace it."""
    import torch

    return torch.cuda.mem_get_info(torch.device(device))


def fingerprint_string(kind: str, fields: dict) -> str:
    """``kind/v<PROMPT_VERSION>|key=value|...``: the translator part of the cache key."""
    return "|".join([f"{kind}/v{PROMPT_VERSION}", *(f"{k}={v}" for k, v in fields.items())])


class Translator(ABC):
    """Translates batches of single segments. Subclasses set :attr:`kind`.

    :meth:`fingerprint` is the translator's part of the cache key: everything that determines
    a segment's translation (kind, model, prompt version, decoding, numeric precision) and
    nothing that does not (endpoint address, key, timeouts, concurrency, batch sizes, device).
    """

    kind: str = ""
    # An unchanged segment is a failed translation, except for a translator that echoes by design.
    echo_is_failure: bool = True

    def __init__(self, cfg: TranslatorConfig):
        self.cfg = cfg
        self._batch_tokens: int | None = None

    def fingerprint_fields(self) -> dict:
        c = self.cfg
        # Not the segmentation limit: a segment's translation does not depend on it.
        return {"model": c.model, "decode": "greedy",
                "new": f"{c.max_new_tokens_ratio}x+{c.max_new_tokens_extra}"}

    def fingerprint(self) -> str:
        """Everything that changes the output: the cache key's translator part."""
        return fingerprint_string(self.kind, self.fingerprint_fields())

    def count_tokens(self, text: str) -> int:
        """Source tokens of a segment (segmentation limit and batch budget)."""
        from clo.data.segment import approx_tokens

        return approx_tokens(text)

    def max_new_tokens(self, n_source_tokens: int) -> int:
        return math.ceil(self.cfg.max_new_tokens_ratio * n_source_tokens) + self.cfg.max_new_tokens_extra

    def batch_tokens(self) -> int:
        """Padded source tokens per batch: ``data.translator.batch_tokens``, or, when that is
        null, :meth:`auto_batch_tokens` (decided once per translator)."""
        if self.cfg.batch_tokens is not None:
            return self.cfg.batch_tokens
        if self._batch_tokens is None:
            self._batch_tokens = self.auto_batch_tokens()
        return self._batch_tokens

    def auto_batch_tokens(self) -> int:
        return DEFAULT_BATCH_TOKENS

    @abstractmethod
    def translate_batch(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str | SegmentFailure]:
        """One translation per text, in order (a :class:`SegmentFailure` where there is none)."""

    def request_counts(self) -> dict[str, int]:
        """Running totals of an endpoint translator: ``requests``, ``retries``, usage tokens."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional: a translator without a model has nothing to free
        """Free the model (GPU memory)."""


@dataclass(frozen=True)
class MemoryModel:
    """What a local model costs in device memory: its weights, and per padded source token of a
    batch (the KV caches and activations of encoding it and generating its translation)."""

    weight_bytes: int
    bytes_per_token: float


def budget_from_memory(free: int, total: int, model: MemoryModel, *, cap: int, loaded: bool) -> int:
    """Padded source tokens per batch that fit in ``free`` bytes of device memory.

    The weights are subtracted unless ``loaded`` (then ``free`` already lacks them), a reserve
    of 1 GiB or 10% of the device stays free, and the per-token estimate counts twice (allocator
    fragmentation, transient buffers). The result is rounded down to a power of two, at least
    :data:`MIN_BATCH_TOKENS` and at most ``cap`` (rounded up to a power of two).
    """
    usable = free - (0 if loaded else model.weight_bytes) - max(GIB, total // 10)
    tokens = int(usable / (2 * model.bytes_per_token)) if usable > 0 else 0
    hi = 1 << max(0, math.ceil(math.log2(max(cap, 1))))
    if tokens < MIN_BATCH_TOKENS:
        log.warning("%.1f GiB free on the device (%.1f GiB of weights to load): batches of at most %d tokens",
                    free / GIB, model.weight_bytes / GIB, MIN_BATCH_TOKENS)
        return min(MIN_BATCH_TOKENS, hi)
    return min(1 << int(math.log2(tokens)), hi)


def activation_bytes(compute: str) -> int:
    """Bytes of an activation value: 2 in the half-precision compute types (CTranslate2's
    ``int8_float16`` included), else 4 (``int8`` on a CPU computes in float32)."""
    return 2 if compute in ("float16", "bfloat16", "int8_float16", "int8_bfloat16") else 4


class LocalModelTranslator(Translator):
    """A translator running a model on this machine: the device, and a batch budget from it."""

    # Bytes per parameter / activation value of each compute precision.
    ELEMENT_BYTES: ClassVar[dict[str, int]] = {
        "float32": 4, "float16": 2, "bfloat16": 2, "int16": 2,
        "int8": 1, "int8_float32": 1, "int8_float16": 1, "int8_bfloat16": 1,
    }

    def __init__(self, cfg: TranslatorConfig):
        super().__init__(cfg)
        self.device = resolve_device(cfg.device)
        self._model = None

    def memory_model(self) -> MemoryModel:
        raise NotImplementedError

    def auto_batch_tokens(self) -> int:
        """On a CPU :data:`DEFAULT_BATCH_TOKENS`; on a GPU from its free memory (:func:`budget_from_memory`),
        at most what ``batch_size`` segments of ``max_segment_tokens`` can use."""
        if not self.device.startswith("cuda"):
            return DEFAULT_BATCH_TOKENS
        free, total = cuda_memory(self.device)
        try:
            model = self.memory_model()
        except (AttributeError, KeyError, OSError, TypeError, ValueError) as e:
            log.warning("cannot estimate the memory of %s (%s): batches of %d tokens; set "
                        "data.translator.batch_tokens", self.cfg.model, e, DEFAULT_BATCH_TOKENS)
            return DEFAULT_BATCH_TOKENS
        cap = self.cfg.batch_size * self.cfg.max_segment_tokens
        n = budget_from_memory(free, total, model, cap=cap, loaded=self._model is not None)
        log.info("translation batches: %d padded source tokens (%.1f GiB free of %.1f, weights %.1f GiB, "
                 "%.0f KiB per token)", n, free / GIB, total / GIB, model.weight_bytes / GIB,
                 model.bytes_per_token / 1024)
        return n

    def close(self):
        self._model = None
