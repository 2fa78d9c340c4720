"""CTranslate2 for the seq2seq translator: the compute type, converted model directories.

``data.translator.dtype: auto`` is ``float16`` on a GPU and ``int8`` on a CPU
(:func:`compute_type`); any CTranslate2 compute type may be named instead. ``float16`` and not
``int8_float16`` on a GPU: M2M100 and NLLB were trained in half precision, so float16 keeps
their translations (int8 weights change some), and at batch 128 a 1.2B model is not bound by
reading its weights there. On a CPU int8 is CTranslate2's fast path (2-3x float32).

A model is either a transformers checkpoint (hub id or directory), converted once and cached
under ``$CLO_CACHE/ct2/``, or a directory made by ``ct2-transformers-converter`` (it holds
``model.bin`` and a vocabulary file), used as it is (:func:`is_ct2_model_dir`).

On a GPU, ``backend: auto`` asks :func:`cuda_problem` first: CTranslate2's wheels link one CUDA
major version's cuBLAS (4.x: ``libcublas.so.12``), which a machine with another CUDA (a CUDA 13
image) does not have; the translator then runs on transformers instead, with one warning.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import re
from pathlib import Path

from clo.data.translators.base import TranslationError, log
from clo.io import atomic_dir

# CTranslate2's compute types (ctranslate2.Translator(compute_type=...)), "default" and "auto" aside.
COMPUTE_TYPES = ("float32", "float16", "bfloat16", "int8", "int8_float32", "int8_float16", "int8_bfloat16",
                 "int16")
_VOCABULARY_FILES = ("shared_vocabulary.json", "shared_vocabulary.txt", "source_vocabulary.json",
                     "source_vocabulary.txt")
# What a tokenizer needs in a directory: one of these (with its other files beside it).
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "sentencepiece.bpe.model", "spm.model",
                   "sentencepiece.model")


def ct2_device(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


@functools.cache
def cuda_problem() -> str | None:
    """Why CTranslate2 cannot run on this machine's GPU, or None when it can.

    Checked without a model: the package imports, it sees a CUDA device, and the cuBLAS its
    library was linked against loads (a missing one fails only at the first translation).
    """
    try:
        import ctranslate2
    except (ImportError, OSError) as e:
        return f"ctranslate2 does not import ({type(e).__name__}: {e})"
    try:
        if ctranslate2.get_cuda_device_count() < 1:
            return f"ctranslate2 {ctranslate2.__version__} sees no CUDA device (a CPU-only build, or no driver)"
    except Exception as e:  # the driver itself failed to answer
        return f"ctranslate2 {ctranslate2.__version__} cannot query CUDA ({e})"
    for lib in cublas_libraries():
        try:
            ctypes.CDLL(lib)
        except OSError as e:
            return (f"ctranslate2 {ctranslate2.__version__} needs {lib}, which does not load here ({e}); "
                    "this machine has another CUDA version")
    return None


def cublas_libraries() -> list[str]:
    """The cuBLAS sonames (``libcublas.so.12``, ...) named in CTranslate2's shared library."""
    import ctranslate2

    pkg = Path(ctranslate2.__file__).parent
    names: set[str] = set()
    for lib in [*pkg.glob("*.so*"), *(pkg.parent / "ctranslate2.libs").glob("libctranslate2*")]:
        try:
            names.update(m.decode() for m in re.findall(rb"libcublas(?:Lt)?\.so\.\d+", lib.read_bytes()))
        except OSError:
            continue
    return sorted(names)


def supported_compute_types(device: str) -> set[str]:
    import ctranslate2

    return set(ctranslate2.get_supported_compute_types(ct2_device(device)))


def compute_type(dtype: str, device: str) -> str:
    """The CTranslate2 compute type for ``data.translator.dtype`` on ``device``.

    ``auto``: ``float16`` on a GPU, ``int8`` on a CPU (``float32`` where those are not
    supported). A named type the device cannot run is an error, not a silent fallback.
    """
    supported = supported_compute_types(device)
    if dtype == "auto":
        want = "float16" if ct2_device(device) == "cuda" else "int8"
        return want if want in supported else "float32"
    if dtype not in COMPUTE_TYPES:
        raise TranslationError(f"unknown dtype {dtype!r} for CTranslate2; use auto or one of "
                               f"{', '.join(COMPUTE_TYPES)}")
    if dtype not in supported:
        raise TranslationError(f"CTranslate2 cannot compute in {dtype} on {ct2_device(device)} "
                               f"(supported: {', '.join(sorted(supported))}); set data.translator.dtype")
    return dtype


def is_ct2_model_dir(path: str | Path) -> bool:
    """A directory made by ``ct2-transformers-converter``: ``model.bin`` and a vocabulary file."""
    p = Path(path)
    return (p / "model.bin").is_file() and any((p / f).is_file() for f in _VOCABULARY_FILES)


def has_tokenizer_files(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / f).is_file() for f in TOKENIZER_FILES)


def converted_dir(model_path: str) -> Path:
    """Where :func:`load_ctranslate2` keeps the conversion of a transformers checkpoint: under
    ``$CLO_CACHE/ct2/``, named by a hash of the checkpoint's path and its config."""
    from clo.models import cache_root

    src = Path(model_path)
    ident = model_path
    if (src / "config.json").is_file():
        ident += (src / "config.json").read_text(encoding="utf-8")
    return cache_root() / "ct2" / hashlib.sha256(ident.encode()).hexdigest()[:16]


def convert_once(model_path: str) -> Path:
    """The CTranslate2 directory of a checkpoint: ``model_path`` itself when it is one, else its
    conversion, made once (into a temporary directory renamed when complete) in the precision of
    the checkpoint's weights; the compute type is chosen when it is loaded."""
    if is_ct2_model_dir(model_path):
        return Path(model_path)
    import ctranslate2

    target = converted_dir(model_path)
    if not (target / "model.bin").is_file():
        log.info("converting %s to CTranslate2 (once) in %s", model_path, target)
        with atomic_dir(target) as tmp:
            ctranslate2.converters.TransformersConverter(model_path).convert(str(tmp), force=True)
    return target


def load_ctranslate2(model_path: str, device: str, dtype: str = "auto", **options):
    """A ``ctranslate2.Translator`` for an M2M100/NLLB checkpoint or converted directory
    (:func:`convert_once`), computing in :func:`compute_type` of ``dtype`` on ``device``;
    ``options`` go to ``ctranslate2.Translator`` (``intra_threads``, ...)."""
    import ctranslate2

    ctype = compute_type(dtype, device)
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    return ctranslate2.Translator(str(convert_once(model_path)), device=ct2_device(device),
                                  device_index=index, compute_type=ctype, **options)
