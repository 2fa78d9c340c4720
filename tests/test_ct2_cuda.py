"""`backend: auto` on a GPU where CTranslate2 cannot run (a CUDA 12 build on a CUDA 13 machine):
the check names why, and the translator falls back to transformers with one warning."""

import logging

import ctranslate2  # noqa: F401  (dev extra: a missing one is a failure, not a skip)
import pytest

from clo.data import translators as T
from clo.data.config import TranslatorConfig
from clo.data.translators import ct2, seq2seq


@pytest.fixture(scope="module")
def tiny_m2m(tmp_path_factory):
    from clo.data.testing import tiny_m2m100

    return tiny_m2m100(tmp_path_factory.mktemp("m2m"))


@pytest.fixture
def gpu_without_cublas(monkeypatch):
    """A machine whose driver shows one GPU but whose CUDA lacks the cuBLAS CTranslate2 links."""
    real = ct2.ctypes.CDLL
    loaded = []

    def cdll(name, *a, **kw):
        loaded.append(name)
        if name.startswith("libcublas"):
            raise OSError(f"{name}: cannot open shared object file: No such file or directory")
        return real(name, *a, **kw)

    monkeypatch.setattr(ct2.ctypes, "CDLL", cdll)
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    monkeypatch.setattr(seq2seq, "_WARNED", set())
    ct2.cuda_problem.cache_clear()
    yield loaded
    ct2.cuda_problem.cache_clear()


def test_the_linked_cublas_is_found_in_the_library():
    # The PyPI wheels of CTranslate2 4.x link CUDA 12's cuBLAS.
    libs = ct2.cublas_libraries()
    assert libs and all(lib.startswith("libcublas") and lib.rsplit(".", 1)[1].isdigit() for lib in libs)


def test_cuda_problem_names_the_missing_cublas(gpu_without_cublas):
    problem = ct2.cuda_problem()
    assert problem is not None and ct2.cublas_libraries()[0] in problem and "does not load" in problem
    assert gpu_without_cublas == ct2.cublas_libraries()  # it tried exactly the linked sonames


def test_cuda_problem_without_a_device(monkeypatch):
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 0)
    ct2.cuda_problem.cache_clear()
    try:
        assert "sees no CUDA device" in ct2.cuda_problem()
    finally:
        ct2.cuda_problem.cache_clear()


def test_cuda_problem_none_when_cublas_loads(monkeypatch):
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    monkeypatch.setattr(ct2.ctypes, "CDLL", lambda name, *a, **kw: object())
    ct2.cuda_problem.cache_clear()
    try:
        assert ct2.cuda_problem() is None
    finally:
        ct2.cuda_problem.cache_clear()


def test_auto_backend_falls_back_to_transformers_with_one_warning(tiny_m2m, gpu_without_cublas, monkeypatch,
                                                                    caplog, tmp_path):
    import clo.models

    monkeypatch.setenv("CLO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(clo.models, "resolve_dtype", lambda dtype, device: __import__("torch").bfloat16)
    cfg = TranslatorConfig(kind="seq2seq", model=str(tiny_m2m), device="cuda")
    with caplog.at_level(logging.WARNING):
        first = T.make_translator(cfg)
        second = T.make_translator(cfg)
    assert first.backend == second.backend == "transformers"
    assert first.fingerprint().endswith("|backend=transformers|compute=bfloat16")
    warnings = [r for r in caplog.records if "translating with transformers instead" in r.getMessage()]
    assert len(warnings) == 1 and "libcublas" in warnings[0].getMessage()
    # Asked for by name, CTranslate2 is not replaced silently.
    assert first._choose_backend("ctranslate2") == "ctranslate2"
    # On a CPU nothing is checked: CTranslate2 runs there.
    assert T.make_translator(cfg.model_copy(update={"device": "cpu"})).backend == "ctranslate2"
