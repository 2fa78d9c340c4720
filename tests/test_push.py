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
