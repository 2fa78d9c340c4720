"""``clo push``: the upload's request path, against a fake hub on 127.0.0.1.

The fake answers what ``HfApi.create_repo`` and ``HfApi.upload_folder`` ask: ``POST
/api/repos/create``, ``POST /api/validate-yaml`` (the card's metadata), ``POST
/api/<type>s/<repo>/preupload/<rev>`` (answered ``uploadMode: regular`` for every file, so the
files travel base64-encoded in the commit; the hub's LFS / Xet path for large files is
huggingface_hub's own and not exercised here) and ``POST /api/<type>s/<repo>/commit/<rev>``
(NDJSON: a header line, then one line per file). It records every request.
"""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clo import hub


class FakeHub:
    def __init__(self, fail_create: int | None = None):
        self.requests: list[dict] = []
        self.fail_create = fail_create
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    return self.rfile.read(n)
                out = b""
                if self.headers.get("Transfer-Encoding") == "chunked":
                    for _ in range(100_000):  # bounded: a chunked body ends with a zero-size chunk
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return out

            def _send(self, code: int, obj) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self._body()
                owner.requests.append({"path": self.path, "auth": self.headers.get("authorization"), "body": body})
                base = f"http://127.0.0.1:{owner.port}"
                if self.path == "/api/repos/create":
                    if owner.fail_create:
                        return self._send(owner.fail_create, {"error": "Invalid credentials in Authorization header"})
                    req = json.loads(body)
                    prefix = "datasets/" if req.get("type") == "dataset" else ""
                    return self._send(200, {"url": f"{base}/{prefix}{req['organization']}/{req['name']}"})
                if self.path == "/api/validate-yaml":
                    return self._send(200, {"errors": [], "warnings": []})
                if "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
                if "/commit/" in self.path:
                    repo = self.path.split("/commit/")[0].replace("/api/models/", "/").replace("/api/", "/")
                    return self._send(200, {"commitUrl": f"{base}{repo}/commit/{'c' * 40}", "commitOid": "c" * 40,
                                            "pullRequestUrl": None})
                return self._send(404, {"error": f"not served: {self.path}"})

            do_PUT = do_POST

            def do_GET(self):
                owner.requests.append({"path": self.path, "auth": self.headers.get("authorization"), "body": b""})
                self._send(404, {"error": f"not served: {self.path}"})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def commit(self) -> tuple[dict, dict[str, bytes]]:
        """(header, {path: content}) of the (one) commit request."""
        (req,) = [r for r in self.requests if "/commit/" in r["path"]]
        lines = [json.loads(line) for line in req["body"].decode().splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
        return header, files


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    servers = []

    def make(**kw):
        s = FakeHub(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def _model_run(tmp_path):
    run = tmp_path / "run"
    best = run / "best"
    (best / "adapter").mkdir(parents=True)
    (best / "config.json").write_text('{"model_type": "llama"}')
    (best / "model.safetensors").write_bytes(b"\x00weights" * 10)
    (best / "tokenizer.json").write_text("{}")
    (best / "adapter" / "adapter_config.json").write_text('{"r": 16}')
    (best / "model.safetensors.tmp").write_bytes(b"partial")
    (best / ".hidden").write_text("x")
    (run / "last").mkdir()
    (run / "last" / "state.pt").write_bytes(b"state")
    (run / "result.json").write_text(json.dumps({"best_checkpoint": str(best), "metrics": {
        "method": "clo", "finished": True, "steps": 20, "total_steps": 20, "examples": 40, "best_val_loss": 1.25,
        "best_step": 10, "final_val_loss": 1.3, "train_loss": 1.1, "val_metrics": {"val/loss": 1.3, "val/acc_en": 0.6},
        "trainable": "lora", "trainable_params": 1234}}))
    (run / "run.json").write_text(json.dumps({"fingerprint": "f", "inputs": {
        "model": {"spec": "HuggingFaceTB/SmolLM2-135M-Instruct"}, "lang": "de",
        "train": {"method": "clo", "lam": 0.5, "beta": 0.1, "lr": 5e-5, "batch_size": 8, "epochs": 1.0,
                  "trainable": "lora", "lora_r": 16}, "data": {"train": "ab" * 32, "val": "cd" * 32}}}))
    (run / "log.jsonl").write_text(json.dumps({"step": 10, "train/loss": 1.2, "train/lr": 4e-5}) + "\n"
                                   + json.dumps({"step": 10, "val/loss": 1.25}) + "\n")
    return run


def test_push_model_request_path(fake_hub, tmp_path, monkeypatch):
    srv = fake_hub()
    monkeypatch.setenv("HF_TOKEN", "hf_secret_test")
    run = _model_run(tmp_path)
    res = hub.push(run, "me/smol-clo-de", endpoint=srv.url, private=True)
    assert res["repo_type"] == "model" and res["directory"] == str(run / "best")
    assert res["url"].endswith("/me/smol-clo-de/commit/" + "c" * 40)
    paths = srv.paths()
    assert paths[0] == "/api/repos/create"
    assert "/api/models/me/smol-clo-de/preupload/main" in paths and paths[-1] == "/api/models/me/smol-clo-de/commit/main"
    assert all(r["auth"] == "Bearer hf_secret_test" for r in srv.requests)
    create = json.loads(srv.requests[0]["body"])
    assert create["name"] == "smol-clo-de" and create["organization"] == "me" and create["visibility"] == "private"
    header, files = srv.commit()
    assert header["summary"] == "Upload model with clo push"
    assert sorted(files) == ["README.md", "adapter/adapter_config.json", "config.json", "model.safetensors",
                             "tokenizer.json", "trainer_state.json"]
    assert files["model.safetensors"] == b"\x00weights" * 10
    card = files["README.md"].decode()
    assert card.startswith("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n")
    assert "German (de)" in card and "| best validation loss | 1.25 (step 10) |" in card and "adapter/" in card
    state = json.loads(files["trainer_state.json"])
    assert state["best_metric"] == 1.25 and state["global_step"] == 20
    assert state["log_history"] == [{"loss": 1.2, "learning_rate": 4e-5, "step": 10}, {"eval_loss": 1.25, "step": 10}]


def test_push_dataset_writes_a_card_and_leaves_the_cache(fake_hub, tmp_path, monkeypatch):
    srv = fake_hub()
    monkeypatch.setenv("MY_TOKEN", "hf_other")
    d = tmp_path / "data"
    (d / "subsets").mkdir(parents=True)
    for name in ("train.jsonl", "validation.jsonl", "rejects.jsonl", "subsets/train_2.jsonl"):
        (d / name).write_text('{"id": "r0"}\n')
    (d / "summary.json").write_text(json.dumps({"source": "alpaca", "tgt_lang": "sw", "records_in": 3,
                                                "records_out": 2, "train": 1, "validation": 1}))
    (d / "translations.sqlite").write_bytes(b"SQLite format 3\x00")
    (d / "translations.sqlite-wal").write_bytes(b"wal")
    res = hub.push(d, "me/clo-sw", endpoint=srv.url, token_env="MY_TOKEN", message="data v1")
    assert res["repo_type"] == "dataset"
    assert json.loads(srv.requests[0]["body"])["type"] == "dataset"
    assert srv.paths()[-1] == "/api/datasets/me/clo-sw/commit/main"
    assert all(r["auth"] == "Bearer hf_other" for r in srv.requests)
    header, files = srv.commit()
    assert header["summary"] == "data v1"
    assert sorted(files) == ["README.md", "rejects.jsonl", "subsets/train_2.jsonl", "summary.json", "train.jsonl",
                             "validation.jsonl"]
    card = files["README.md"].decode()
    assert "- sw\n" in card and "  - split: train\n    path: train.jsonl" in card
    assert "  - split: validation\n    path: validation.jsonl" in card


def test_push_cli_dry_run_token_and_errors(fake_hub, tmp_path, monkeypatch, capsys):
    from clo.cli import main

    run = _model_run(tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    srv = fake_hub()
    assert main(["push", str(run), "--repo", "me/m", "--endpoint", srv.url]) == 2
    assert "no hub token: set $HF_TOKEN" in capsys.readouterr().err
    assert srv.requests == []
    assert main(["push", str(run), "--repo", "me/m", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "state.pt" not in out and ".tmp" not in out and ".hidden" not in out
    monkeypatch.setenv("HF_TOKEN", "hf_t")
    assert main(["push", str(run), "--repo", "me/m", "--endpoint", srv.url]) == 0
    assert "pushed model" in capsys.readouterr().out
    bad = fake_hub(fail_create=401)
    assert main(["push", str(run), "--repo", "me/m", "--endpoint", bad.url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clo push: me/m: ") and "401" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    assert main(["push", str(tmp_path / "empty"), "--repo", "me/m"]) == 2
    assert "neither a model" in capsys.readouterr().err


def test_model_card_from_the_trainer_and_evaluation_results(tmp_path):
    from clo.config import load_config
    from clo.train.card import add_eval_results, write_model_card

    cfg = load_config(None, ["model=HuggingFaceTB/SmolLM2-135M-Instruct", "lang=sw", "train.method=sft"])
    best = tmp_path / "run" / "best"
    best.mkdir(parents=True)
    metrics = {"method": "sft", "finished": True, "steps": 5, "total_steps": 5, "examples": 10, "best_val_loss": None,
               "best_step": 5, "trainable": "attention", "trainable_params": 99, "val_metrics": {}}
    write_model_card(best, metrics, cfg)
    card = (best / "README.md").read_text(encoding="utf-8")
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "language:\n- en\n- sw\n" in card
    assert "Swahili (sw)" in card and "| `lr` | 5e-05 |" in card and "| `method` | sft |" in card
    assert "Not evaluated yet" in card
    state = json.loads((best / "trainer_state.json").read_text())
    assert state["num_train_epochs"] == 1.0 and state["train_batch_size"] == 8 and state["log_history"] == []
    add_eval_results(best, "belebele", "sw", {"accuracy": 0.41, "n": 900, "per_item": [1, 0]})
    add_eval_results(best, "mmmlu", "sw", {"accuracy": 0.3})
    card = (best / "README.md").read_text(encoding="utf-8")
    assert "| belebele | sw | accuracy | 0.41 |" in card and "| mmmlu | sw | accuracy | 0.3 |" in card
    assert "Not evaluated yet" not in card and "| `lr` | 5e-05 |" in card


# ---------------------------------------------------------------------------------------------
# Only what clo wrote, no local paths, nothing written locally; cards with hub metadata


def _tree(d):
    """Every file under ``d`` with its bytes and mtime: what 'nothing written' is checked against."""
    return {p.relative_to(d).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))
            if p.is_file()}


def _dataset_dir(tmp_path):
    d = tmp_path / "data"
    (d / "subsets").mkdir(parents=True)
    for name in ("train.jsonl", "validation.jsonl", "rejects.jsonl", "subsets/train_2.jsonl"):
        (d / name).write_text('{"id": "r0"}\n')
    (d / "summary.json").write_text(json.dumps({
        "source": "alpaca", "path": str(tmp_path / "my_alpaca.json"), "tgt_lang": "sw", "records_in": 3,
        "records_out": 2, "train": 1, "validation": 1, "cache": str(d / "translations.sqlite"),
        "files": {"train": str(d / "train.jsonl")},
        "translator": f"seq2seq/v3|model={tmp_path / 'models' / 'm2m100'}|decode=greedy|new=1.5x+16"}))
    (d / "build.json").write_text(json.dumps({"fingerprint": "f", "inputs": {"translator": str(tmp_path)}}))
    (d / "notes.txt").write_text("OPENAI_API_KEY=sk-test-do-not-upload\n")
    (d / "README.md").write_text("# my own notes about this folder\n")
    return d


def test_push_uploads_only_what_clo_wrote_and_writes_nothing_locally(fake_hub, tmp_path, monkeypatch, capsys):
    from huggingface_hub import DatasetCard

    from clo.cli import main

    monkeypatch.setenv("HF_TOKEN", "hf_t")
    d = _dataset_dir(tmp_path)
    before = _tree(d)
    srv = fake_hub()
    assert main(["push", str(d), "--repo", "me/clo-sw", "--endpoint", srv.url]) == 0
    _, files = srv.commit()
    assert sorted(files) == ["README.md", "rejects.jsonl", "subsets/train_2.jsonl", "summary.json", "train.jsonl",
                             "validation.jsonl"]
    assert all(b"sk-test" not in v for v in files.values())
    assert _tree(d) == before  # no README.md (or anything else) written into the user's folder
    # No local path in anything uploaded; the summary keeps its counts.
    for name, content in files.items():
        assert str(tmp_path).encode() not in content, name
    summary = json.loads(files["summary.json"])
    assert summary["records_out"] == 2 and "path" not in summary and "cache" not in summary
    # The card: huggingface_hub's DatasetCard, the user's README.md not uploaded, the translator
    # cell one cell of a two-column table.
    card = DatasetCard(files["README.md"].decode())
    assert card.data.language == ["en", "sw"] and card.data.tags == ["clo", "cross-lingual", "translation"]
    assert card.data.configs[0]["data_files"][0] == {"split": "train", "path": "train.jsonl"}
    (row,) = [ln for ln in card.text.splitlines() if ln.startswith("| translator")]
    assert row.count("|") == 3 and "local model `m2m100`" in row and "decode greedy" in row

    # --include adds a file the allow-list leaves out; the dry run says what is left out.
    assert main(["push", str(d), "--repo", "me/clo-sw", "--dry-run"]) == 0
    out = capsys.readouterr().out
    left = out.split("left out")[1]
    assert "notes.txt" in left and "build.json" in left and "README.md" in left
    srv2 = fake_hub()
    assert main(["push", str(d), "--repo", "me/clo-sw", "--endpoint", srv2.url, "--include", "notes.txt"]) == 0
    assert "notes.txt" in srv2.commit()[1]
    assert _tree(d) == before


def test_pushed_model_files_name_no_local_path_and_the_adapter_names_the_hub_base(fake_hub, tmp_path,
                                                                                 monkeypatch):
    from huggingface_hub import ModelCard

    monkeypatch.setenv("HF_TOKEN", "hf_t")
    monkeypatch.setenv("CLO_CACHE", str(tmp_path / "cache"))
    run = _model_run(tmp_path)
    best = run / "best"
    offline_dir = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    offline_dir.mkdir(parents=True)
    # As an older clo wrote them: absolute paths in the state, a local base in the adapter config.
    (best / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"r": 16, "base_model_name_or_path": str(offline_dir), "peft_type": "LORA"}))
    (best / "adapter" / "adapter_model.safetensors").write_bytes(b"adapter")
    (best / "trainer_state.json").write_text(json.dumps({
        "best_model_checkpoint": str(best), "global_step": 20, "log_history": [],
        "clo": {"base_model": "smollm2-135m-instruct", "lang": "de",
                "train": {"method": "clo", "lr": 5e-5, "reference_cache": str(tmp_path / "refcache"),
                          "trainable": "lora"},
                "data": {"train": "ab" * 32}, "metrics": {"steps": 20, "best_val_loss": 1.25}}}))
    (best / "README.md").write_text(f"stale card naming {best}\n")
    before = _tree(run)
    srv = fake_hub()
    res = hub.push(run, "me/smol-clo-de", endpoint=srv.url)
    _, files = srv.commit()
    assert sorted(files) == ["README.md", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                             "config.json", "model.safetensors", "tokenizer.json", "trainer_state.json"]
    assert res["files"] == sorted(files)
    for name, content in files.items():
        assert str(tmp_path).encode() not in content, name
    adapter = json.loads(files["adapter/adapter_config.json"])
    assert adapter == {"r": 16, "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "peft_type": "LORA"}
    state = json.loads(files["trainer_state.json"])
    assert "best_model_checkpoint" not in state and "reference_cache" not in state["clo"]["train"]
    assert state["clo"]["train"]["lr"] == 5e-5
    card = ModelCard(files["README.md"].decode())
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "stale card" not in card.text
    assert _tree(run) == before


def test_a_metadata_file_with_a_local_path_stops_the_push(fake_hub, tmp_path, monkeypatch, capsys):
    from clo.cli import main

    monkeypatch.setenv("HF_TOKEN", "hf_t")
    d = _dataset_dir(tmp_path)
    (d / "summary.md").write_text(f"# built from {tmp_path / 'my_alpaca.json'}\n")
    srv = fake_hub()
    assert main(["push", str(d), "--repo", "me/clo-sw", "--endpoint", srv.url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "summary.md: contains the local path" in err[0]
    assert srv.requests == []
    assert main(["push", str(d), "--repo", "../../etc", "--endpoint", srv.url]) == 2
    assert "not a hub repository id" in capsys.readouterr().err and srv.requests == []


def test_base_model_is_a_hub_id_or_omitted(tmp_path, monkeypatch):
    from clo.train.card import base_model_id

    monkeypatch.setenv("CLO_CACHE", str(tmp_path / "cache"))
    assert base_model_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model_id("gemma-3-270m") == "google/gemma-3-270m"
    assert base_model_id("org/model") == "org/model"
    (tmp_path / "cache" / "models" / "gemma-3-270m").mkdir(parents=True)
    assert base_model_id(str(tmp_path / "cache" / "models" / "gemma-3-270m")) == "google/gemma-3-270m"
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    assert base_model_id(str(snap)) == "org/tiny"
    (tmp_path / "mine").mkdir()
    assert base_model_id(str(tmp_path / "mine")) is None
    assert base_model_id(str(tmp_path / "missing")) is None and base_model_id(None) is None


def test_sft_dpo_card_names_the_original_base_with_unique_tags(tmp_path, monkeypatch):
    """A real sft+dpo run from a hub-cache snapshot of a tiny model: the final (dpo) card names the
    snapshot's hub id as base_model, not <out>/sft/best, and its tags are unique."""
    import random

    from huggingface_hub import ModelCard

    from clo.config import config_from_dict
    from clo.testing import tiny_model, tiny_tokenizer
    from clo.train.trainer import train

    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("b" * 40)
    tiny_model("llama", vocab_size=512).save_pretrained(snap)
    tiny_tokenizer().save_pretrained(snap)
    rng = random.Random(0)
    words = ["der", "die", "das", "Haus", "the", "cat", "dog"]
    rows = [{"id": f"r{i}", "tgt_lang": "de", **{k: " ".join(rng.choice(words) for _ in range(4))
                                                 for k in ("x_en", "y_en", "x_tgt", "y_tgt")}} for i in range(8)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config_from_dict({"model": str(snap), "lang": "de", "train": {
        "method": "sft+dpo", "batch_size": 8, "max_length": 64, "reference_cache": str(tmp_path / "ref")}})
    res = train(cfg, tmp_path / "train.jsonl", None, tmp_path / "run")
    assert res.best_checkpoint == tmp_path / "run" / "dpo" / "best"
    for stage in ("sft", "dpo"):
        best = tmp_path / "run" / stage / "best"
        card = ModelCard((best / "README.md").read_text())
        assert card.data.base_model == "org/tiny", stage
        assert card.data.tags == ["clo", "cross-lingual", stage]
        state = (best / "trainer_state.json").read_text()
        assert str(tmp_path) not in state and str(tmp_path) not in (best / "README.md").read_text()
    dpo_card = (tmp_path / "run" / "dpo" / "best" / "README.md").read_text()
    assert "| base model | [`org/tiny`](https://huggingface.co/org/tiny) |" in dpo_card
