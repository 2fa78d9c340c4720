"""A model is what its files hold: a checkpoint whose weights were swapped for others of the same
size, times preserved, is another model, and no earlier result is reused for it."""

import json
import os
import shutil

import pytest

from clo import identity
from clo.identity import directory_identity, file_digest, model_identity


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLO_CACHE", str(tmp_path / "clo-cache"))


def _swap_keeping_times(path, data: bytes):
    """Replace ``path``'s bytes by ``data`` (same length) in place and restore its times, as
    ``touch -r`` would: what the audit did to a checkpoint."""
    st = os.stat(path)
    assert len(data) == st.st_size
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


def test_file_digest_is_cached_and_a_same_size_same_mtime_swap_is_read_again(tmp_path, monkeypatch):
    import hashlib

    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    reads = []
    real = identity.sha256_file
    monkeypatch.setattr(identity, "sha256_file", lambda p: reads.append(p) or real(p))
    assert file_digest(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert file_digest(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert len(reads) == 1  # the second answer came from the cache
    _swap_keeping_times(f, b"b" * 1000)
    assert file_digest(f) == hashlib.sha256(b"b" * 1000).hexdigest()
    assert len(reads) == 2
    # A copy with the times carried over (cp -p) is another inode: read, not trusted.
    g = tmp_path / "copy.bin"
    shutil.copy2(f, g)
    assert file_digest(g) == hashlib.sha256(b"b" * 1000).hexdigest() and len(reads) == 3


def test_directory_identity_is_content_without_card_files_or_paths(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "model.safetensors").write_bytes(b"weights")
    (a / "config.json").write_text("{}")
    ident = directory_identity(a)
    assert ident["files"] == 2
    # Evaluations rewrite the card files; hidden files are no part of the model.
    (a / "README.md").write_text("card")
    (a / "eval_results.json").write_text("{}")
    (a / "trainer_state.json").write_text("{}")
    (a / ".cache").mkdir()
    (a / ".cache" / "x").write_text("x")
    assert directory_identity(a) == ident
    # A moved copy is the same model; another byte is another model.
    shutil.copytree(a, tmp_path / "b")
    assert model_identity(str(tmp_path / "b")) == ident
    (tmp_path / "b" / "config.json").write_text("{ }")
    assert model_identity(str(tmp_path / "b")) != ident


def test_a_hub_id_is_its_cached_commit_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert model_identity("org/tiny-model") == {"hub": "org/tiny-model", "revision": commit}
    assert model_identity("org/not-cached") == {"hub": "org/not-cached", "revision": None}
    # The hub moved main to another commit: another identity.
    other = "f" * 40
    (repo / "refs" / "main").write_text(other)
    (repo / "snapshots" / other).mkdir()
    (repo / "snapshots" / other / "config.json").write_text("{}")
    assert model_identity("org/tiny-model")["revision"] == other


def test_swapped_checkpoint_makes_clo_eval_rerun_not_reuse(shared_data, tmp_path, capsys):
    from clo.cli import main
    from clo.testing import tiny_model, tiny_tokenizer

    model_dir, other = tmp_path / "model", tmp_path / "other"
    tiny_model("llama", vocab_size=512, seed=0).save_pretrained(model_dir)
    tiny_model("llama", vocab_size=512, seed=1).save_pretrained(other)
    tiny_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "data" / "belebele"
    data.mkdir(parents=True)
    rows = [json.loads(ln) for ln in (shared_data / "belebele" / "deu_Latn.jsonl").open(encoding="utf-8")][:2]
    (data / "deu_Latn.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    argv = ["eval", "belebele", "--model", str(model_dir), "--lang", "de", "--data-dir", str(tmp_path / "data"),
            "--output", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 0
    first = json.loads((tmp_path / "out" / "belebele-de.json").read_text())
    capsys.readouterr()

    weights = (other / "model.safetensors").read_bytes()
    assert weights != (model_dir / "model.safetensors").read_bytes()
    _swap_keeping_times(model_dir / "model.safetensors", weights)
    # Not the earlier result: the cache of the old weights is refused, naming the model...
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "(differing: model.sha256)" in err and "Traceback" not in err
    # ... and --overwrite evaluates the new weights.
    assert main([*argv, "--overwrite"]) == 0
    second = json.loads((tmp_path / "out" / "belebele-de.json").read_text())
    assert second["model"] != first["model"]
    assert [r["loglik"] for r in second["records"]] != [r["loglik"] for r in first["records"]]


def test_a_hub_id_is_the_hubs_commit_online_and_the_cache_when_unreachable(tmp_path, monkeypatch):
    from huggingface_hub import HfApi, constants

    commit = "1" * 40
    repo = tmp_path / "hub" / "models--org--m"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    identity._hub_revision_online.cache_clear()

    class Info:
        sha = "2" * 40

    monkeypatch.setattr(HfApi, "model_info", lambda self, repo_id, timeout=None: Info())
    assert model_identity("org/m") == {"hub": "org/m", "revision": "2" * 40}
    identity._hub_revision_online.cache_clear()

    class Unreachable(Exception):  # the hub client's connection errors are no OSError
        pass

    def refuse(self, repo_id, timeout=None):
        raise Unreachable("Name or service not known")

    monkeypatch.setattr(HfApi, "model_info", refuse)
    assert model_identity("org/m") == {"hub": "org/m", "revision": commit}
    identity._hub_revision_online.cache_clear()
