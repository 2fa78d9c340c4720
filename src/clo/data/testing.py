"""Test helpers of the data stage: a tiny M2M100 model, a misbehaving chat endpoint.

:func:`tiny_m2m100` builds a tiny random M2M100 translation model with a real M2M100 tokenizer,
in-process. Tests and the CPU run of ``bench/translate_throughput.py`` use it in place of
facebook/m2m100_1.2B: the architecture, the tokenizer class, the language tokens and the forced
BOS mechanism are the real ones, only the sizes shrink (a sentencepiece model trained on a few
sentences, two layers of width 32 unless asked otherwise).

:class:`FakeChatServer` is a local OpenAI-compatible endpoint with selectable faults (429, 500,
timeouts, malformed JSON, HTML, empty, null, echoed answers) for the openai translator's tests.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import ClassVar

from clo.registry import unknown_name_message

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. What is the capital of France? Paris.",
    "Der schnelle braune Fuchs springt über den faulen Hund. Was ist die Hauptstadt von Frankreich?",
    "Write a short poem about the sea. Explain how photosynthesis works in plants.",
    "Schreibe ein kurzes Gedicht über das Meer. Erkläre, wie Photosynthese funktioniert.",
    "Here are three tips for better sleep: go to bed early, avoid screens, and keep the room dark.",
    "Hier sind drei Tipps für besseren Schlaf: früh ins Bett gehen, Bildschirme meiden.",
]


def tiny_m2m100(out_dir: str | Path, *, d_model: int = 32, layers: int = 2, heads: int = 4,
                ffn: int | None = None, vocab_size: int | None = None, seed: int = 0,
                max_positions: int = 256, dtype=None) -> Path:
    """Save a random M2M100 model and its M2M100Tokenizer to ``out_dir``; return the directory.

    ``vocab_size`` larger than the tokenizer's (about 250) pads the embedding with fairseq's
    "madeupword" slots, as the real checkpoints do; the throughput bench uses it for the
    M2M100-1.2B shapes (``d_model=1024, layers=24, heads=16, ffn=8192, vocab_size=128112``).
    """
    import sentencepiece as spm
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, M2M100Tokenizer
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    out = Path(out_dir)
    work = out / "_spm"
    work.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4), model_prefix=str(work / "spm"), vocab_size=150,
        model_type="bpe", character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1,
        hard_vocab_limit=False, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(work / "spm.model"))
    # fairseq's dictionary order: specials first, then the sentencepiece pieces.
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    (work / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    # Real checkpoints list the language tokens as additional special tokens in their
    # tokenizer config; the constructor alone does not add them.
    lang_tokens = [f"__{c}__" for c in FAIRSEQ_LANGUAGE_CODES["m2m100"]]
    tok = M2M100Tokenizer(vocab_file=str(work / "vocab.json"), spm_file=str(work / "spm.model"),
                          src_lang="en", tgt_lang="de", additional_special_tokens=lang_tokens,
                          num_madeup_words=0)
    base = max(tok.lang_token_to_id.values()) + 1
    # By default no "madeupword" slots: a random model could emit them, and they decode
    # differently in transformers ("<unk>") and CTranslate2 ("").
    tok.num_madeup_words = max(0, (vocab_size or base) - base)
    vocab_size = base + tok.num_madeup_words
    cfg = M2M100Config(
        vocab_size=vocab_size, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn or 2 * d_model,
        decoder_ffn_dim=ffn or 2 * d_model, max_position_embeddings=max_positions, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
    )
    torch.manual_seed(seed)
    model = M2M100ForConditionalGeneration(cfg).eval()
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------
# A misbehaving OpenAI-compatible endpoint, for the fault-injection tests of the openai translator

GERMAN = ("Der Hund schläft im Garten.", "Heute ist das Wetter schön und warm.",
          "Wir kaufen Brot beim Bäcker um die Ecke.", "Die Kinder spielen gern Fußball.",
          "Mein Bruder liest jeden Abend ein Buch.", "Das Museum öffnet um neun Uhr.",
          "Im Winter fällt in den Bergen viel Schnee.", "Sie trinkt ihren Kaffee ohne Zucker.")


def fake_german(text: str) -> str:
    """Real German sentences (so the language check passes), about as long as ``text``, chosen by
    a hash of it: deterministic, and different for different texts."""
    import hashlib

    i = int(hashlib.sha256(text.encode()).hexdigest(), 16) % len(GERMAN)
    out = GERMAN[i]
    while len(out) < 0.9 * len(text):
        i = (i + 3) % len(GERMAN)
        out += " " + GERMAN[i]
    # A translation keeps its source's numbers (the build's numbers check looks for them).
    return " ".join([out, *re.findall(r"[0-9]+", text)])


class FakeChatServer:
    """A local OpenAI-compatible ``/chat/completions`` endpoint that fails on purpose.

    ``faults`` maps a segment (the request's last message) to its answers: a mode for every
    request, or a list of modes for its first requests and ``ok`` after. Other segments get
    ``default``. Reassign :attr:`faults` to "fix" the server between runs. Modes:

    ``ok`` (:func:`fake_german`), ``429`` (with ``Retry-After: <retry_after>``), ``500``, ``400``,
    ``401``, ``timeout`` (answers after ``hang`` seconds: set the client's timeout below it),
    ``malformed`` (a truncated JSON body), ``html`` (a proxy's error page with status 200),
    ``empty`` (content ``""``), ``null`` (content null), ``echo`` (the segment itself).

    Every 200 answer that is JSON carries ``usage`` = :attr:`USAGE`. :attr:`log` holds
    ``(segment, mode, monotonic time)`` per request. Binds 127.0.0.1 on a free port; use it as
    a context manager (stops the server thread).
    """

    MODES = ("ok", "429", "500", "400", "401", "timeout", "malformed", "html", "empty", "null", "echo")
    USAGE: ClassVar[dict] = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}

    def __init__(self, faults: dict | None = None, *, default: str = "ok", retry_after: float = 0.05,
                 hang: float = 1.0, translate=fake_german):
        import threading
        from http.server import ThreadingHTTPServer

        self.faults = dict(faults or {})
        for modes in [default, *self.faults.values()]:
            for m in [modes] if isinstance(modes, str) else modes:
                if m not in self.MODES:
                    raise ValueError(unknown_name_message("fault mode", m, self.MODES))
        self.default, self.retry_after, self.hang, self.translate = default, retry_after, hang, translate
        self.log: list[tuple[str, str, float]] = []
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def mode_for(self, text: str) -> str:
        """The mode of this request (called once per request, in arrival order)."""
        import time

        with self._lock:
            n = sum(1 for t, _, _ in self.log if t == text)
            modes = self.faults.get(text, self.default)
            mode = modes if isinstance(modes, str) else (modes[n] if n < len(modes) else "ok")
            self.log.append((text, mode, time.monotonic()))
        return mode

    def requests_for(self, text: str) -> list[str]:
        with self._lock:
            return [m for t, m, _ in self.log if t == text]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _handler(server: FakeChatServer):
    import json
    import time
    from http.server import BaseHTTPRequestHandler

    def completion(model: str, content) -> dict:
        return {"id": "fake", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": dict(server.USAGE)}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = body["messages"][-1]["content"]
            mode = server.mode_for(text)
            model = body.get("model", "")
            if mode == "timeout":
                time.sleep(server.hang)  # bounded: the client has given up by now
                mode = "ok"
            # A client that timed out has closed the connection: nothing to answer.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._answer(mode, text, model)

        def _answer(self, mode: str, text: str, model: str):
            if mode == "ok":
                return self._json(200, completion(model, f" {server.translate(text)} "))
            if mode in ("echo", "empty", "null"):
                return self._json(200, completion(model, {"echo": text, "empty": "", "null": None}[mode]))
            if mode == "429":
                return self._json(429, {"error": {"message": "rate limited"}}, {"Retry-After": str(server.retry_after)})
            if mode in ("500", "400", "401"):
                return self._json(int(mode), {"error": {"message": f"fault {mode}"}})
            if mode == "malformed":
                return self._raw(200, b'{"id": "fake", "object": "chat.completion", "choices": [', "application/json")
            return self._raw(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")

        def _json(self, code: int, obj: dict, headers: dict | None = None):
            self._raw(code, json.dumps(obj).encode(), "application/json", headers)

        def _raw(self, code: int, data: bytes, ctype: str, headers: dict | None = None):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    return Handler
