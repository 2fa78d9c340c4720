"""``clo push DIR --repo ID``: upload a trained model or a built dataset to the Hugging Face hub.

``DIR`` is a model directory (``best/``: ``config.json`` / ``adapter_config.json`` and weights),
a run directory (its ``best/`` is pushed), or a dataset directory of ``clo data build`` or
``clo data check``. The repository is created when it does not exist (``--private`` for a
private one), then the files go up in one commit (``HfApi.create_commit``).

What goes up is an allow-list of the files clo writes there (:data:`MODEL_FILES`,
:data:`DATASET_FILES`); anything else in the directory (a ``notes.txt``, a key file, an editor's
backup) stays local unless ``--include PATTERN`` names it. ``--dry-run`` lists what would go up
and what is left out.

Nothing is written into ``DIR``: the model card and the dataset card are made in memory with
``huggingface_hub``'s :class:`~huggingface_hub.ModelCard` / :class:`~huggingface_hub.DatasetCard`.
Nothing uploaded names a local path: ``trainer_state.json`` and the other JSON metadata are sent
without them (:func:`clo.train.card.scrub_local_paths`), a LoRA adapter's ``adapter_config.json``
names the base model's hub id (``base_model_name_or_path``), and a file that still holds a path
of this machine stops the push before anything is sent.

- The token is read from the environment: ``$HF_TOKEN`` (``--token-env`` names another
  variable), else the token ``huggingface-cli login`` stored.
- ``--endpoint`` (or ``$HF_ENDPOINT``) points at another hub (a mirror, a local test server).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

HELP = "upload a model or dataset directory to the Hugging Face hub (token from $HF_TOKEN)"

#: What clo writes into a model directory (``save_pretrained`` of the model and its tokenizer, the
#: card files, a LoRA run's adapter): the files ``clo push`` uploads from one.
MODEL_FILES = (
    "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
    "README.md", "trainer_state.json", "eval_results.json",
    "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/README.md",
)
#: What ``clo data build`` and ``clo data check`` write into a dataset directory, less the
#: translation cache and the build's local fingerprint record (``build.json``).
DATASET_FILES = (
    "train.jsonl", "train.parquet", "validation.jsonl", "validation.parquet", "checked.jsonl",
    "rejects.jsonl", "summary.json", "summary.md", "subsets/train_*.jsonl", "subsets/train_*.parquet",
)
#: Never uploaded, even when ``--include`` names them: temporaries, hidden files, the translation
#: cache, training state.
NEVER = ("*.tmp", "*.tmp/*", ".*", "*/.*", "*.sqlite", "*.sqlite-*", "last/*", "*state.pt", "*.broken-*")
_MODEL_MARKERS = ("config.json", "adapter_config.json")
_DATA_MARKERS = ("train.jsonl", "train.parquet", "validation.jsonl", "validation.parquet", "checked.jsonl",
                 "summary.json", "build.json")
# The metadata files that must not name a path of this machine (checked after the JSON ones lost
# theirs): records, weights and tokenizer vocabularies are data and are sent as they are.
_METADATA = ("README.md", "summary.md", "summary.json", "trainer_state.json", "eval_results.json",
             "config.json", "generation_config.json", "adapter/adapter_config.json", "adapter/README.md")


class PushError(ValueError):
    """A directory that cannot be pushed as asked, or no token; the message says what to do."""


def resolve_directory(directory: str | Path) -> Path:
    """The directory to upload: ``DIR`` itself, or ``DIR/best`` for a run directory."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such directory")
    if not any((d / f).is_file() for f in _MODEL_MARKERS) and (d / "best").is_dir():
        d = d / "best"
    from clo.models import materialise
    from clo.train.saved import is_trained_only

    return materialise(d) if is_trained_only(d) else d  # train.save: trained: push the full model


def detect_kind(d: Path) -> str:
    """``model`` or ``dataset``, by the files a model or a clo dataset directory has."""
    if any((d / f).is_file() for f in _MODEL_MARKERS):
        return "model"
    if any((d / f).is_file() for f in _DATA_MARKERS) or any(d.glob("*.jsonl")) or any(d.glob("*.parquet")):
        return "dataset"
    raise PushError(f"{d}: neither a model (config.json, adapter_config.json) nor a dataset directory "
                    "(train.jsonl, *.jsonl, *.parquet); pass --type model or --type dataset")


def _matches(rel: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


def select_files(d: Path, kind: str, include: list[str] | tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """``(uploaded, left_out)``: the relative paths in ``d`` that ``push`` uploads (the allow-list of
    ``kind`` and the ``include`` patterns) and the other files it leaves local (those of
    :data:`NEVER`, never uploaded, in neither list)."""
    allowed = (MODEL_FILES if kind == "model" else DATASET_FILES) + tuple(include)
    up, out = [], []
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).as_posix()
        if not p.is_file() or _matches(rel, NEVER):
            continue
        (up if _matches(rel, allowed) else out).append(rel)
    return up, out


# -- what is sent ----------------------------------------------------------------------------------

def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _model_state(d: Path) -> tuple[dict | None, bool]:
    """``(trainer_state, on_disk)`` of a model directory clo trained: its ``trainer_state.json``,
    else one made from the run's ``result.json`` and ``run.json`` (in a temporary directory, not
    in the user's); ``(None, False)`` for a directory clo did not train."""
    from clo.train import card

    state = _read_json(d / card.STATE)
    if isinstance(state, dict) and isinstance(state.get("clo"), dict):
        return state, True
    if (d.parent / "result.json").is_file() or (d.parent / "run.json").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            best = Path(tmp) / d.name
            metrics = ((_read_json(d.parent / "result.json") or {}).get("metrics")) or {}
            settings = card.run_settings(None, _read_json(d.parent / "run.json"))
            return card.trainer_state(best, metrics, settings, card.log_history(d.parent / "log.jsonl")), False
    return None, False


def _translator_text(value) -> str:
    """A translator fingerprint (``seq2seq/v3|model=...|decode=greedy``) as table-safe text: its
    parts joined by commas, a local model path shortened to its last component."""
    from clo.train.card import is_local_path

    parts = []
    for part in str(value).split("|"):
        key, eq, val = part.partition("=")
        if eq and is_local_path(val):
            val = f"local model `{Path(val).name}`"
        parts.append(f"{key} {val}" if eq else part)
    return ", ".join(parts).replace("\n", " ")


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def dataset_card(d: Path, repo_id: str) -> str:
    """The dataset card of a clo dataset directory (made in memory, never written there)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    summary = _read_json(d / "summary.json") or {}
    lang = summary.get("tgt_lang") if isinstance(summary, dict) else None
    langs = ["en"] + sorted({x.split("-")[0] for x in str(lang).split("+") if x and x != "en"} if lang else set())
    splits = []
    for split in ("train", "validation"):
        for ext in ("jsonl", "parquet"):
            if (d / f"{split}.{ext}").is_file():
                splits.append({"split": split, "path": f"{split}.{ext}"})
    if not splits and (d / "checked.jsonl").is_file():
        splits.append({"split": "train", "path": "checked.jsonl"})
    data = DatasetCardData(language=langs, tags=list(dict.fromkeys(["clo", "cross-lingual", "translation"])),
                           configs=[{"config_name": "default", "data_files": splits}] if splits else None)
    lines = [f"# {repo_id}", "",
             ("Cross-lingual instruction data made with clo: each record is an English instruction pair and "
              f"its machine translation{f' into `{lang}`' if lang else ''}, "
              "`{id, source, tgt_lang, x_en, y_en, x_tgt, y_tgt, meta}` (`meta.checks`: the quality checks "
              "every record passed)."), ""]
    rows = [(k, summary[k]) for k in ("source", "records_in", "records_out", "train", "validation")
            if isinstance(summary, dict) and k in summary]
    if isinstance(summary, dict) and summary.get("translator"):
        rows.append(("translator", _translator_text(summary["translator"])))
    if rows:
        lines += ["| | |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in rows] + [""]
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def _shorten_paths(obj, forbidden: list[str]):
    """Strings that embed a local path (``seq2seq/v3|model=/home/me/m2m100|...``) with the path cut
    to its last component (``model=m2m100``)."""
    if isinstance(obj, dict):
        return {k: _shorten_paths(v, forbidden) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shorten_paths(v, forbidden) for v in obj]
    if isinstance(obj, str) and any(p in obj for p in forbidden):
        pattern = "|".join(re.escape(p) for p in forbidden)
        return re.sub(rf"(?:{pattern})[^\s|\"',;]*", lambda m: Path(m.group(0)).name, obj)
    return obj


def _public_json(rel: str, obj, base: str | None, forbidden: list[str]):
    """A JSON file as uploaded: without local paths; an adapter config naming the base's hub id."""
    from clo.train.card import scrub_local_paths

    if rel.endswith("adapter_config.json") and isinstance(obj, dict):
        obj = {**obj, "base_model_name_or_path": base}
    return _shorten_paths(scrub_local_paths(obj), forbidden)


def local_paths() -> list[str]:
    """Paths of this machine that no uploaded metadata file may contain."""
    from clo.models import cache_root

    out = {str(Path.home()), str(Path.cwd()), str(cache_root()), tempfile.gettempdir()}
    return sorted((p for p in out if len(p) > 1), key=len, reverse=True)


def operations(d: Path, kind: str, repo_id: str, include: list[str] | tuple[str, ...] = ()) -> list[tuple[str, object]]:
    """``[(path_in_repo, path or bytes)]`` of one push: the allow-listed files, JSON metadata
    without local paths, the card made in memory. A metadata file that still names a path of
    this machine (``d`` itself included) is a :class:`PushError`."""
    from clo.train import card as model_card

    up, _ = select_files(d, kind, include)
    state, on_disk = _model_state(d) if kind == "model" else (None, False)
    base = model_card.base_model_id(state["clo"].get("base_model")) if state else None
    forbidden = [str(d.resolve()), *local_paths()]
    ops: dict[str, object] = {}
    for rel in up:
        path = d / rel
        obj = _read_json(path) if rel.endswith(".json") else None
        public = _public_json(rel, obj, base, forbidden) if obj is not None else None
        # Sent as it is unless something had to go (most files: a tokenizer.json stays byte-identical).
        ops[rel] = path if public == obj else (json.dumps(public, indent=1, ensure_ascii=False) + "\n").encode()
    # The card is made in memory: from the training state for a model clo trained (a card on disk
    # may be older), from summary.json for a dataset; another model's own README.md goes as it is.
    if kind == "dataset":
        ops["README.md"] = dataset_card(d, repo_id).encode("utf-8")
    elif state is not None:
        ops["README.md"] = model_card.render_card(state, _read_json(d / model_card.EVAL_RESULTS)).encode("utf-8")
        if not on_disk:
            ops[model_card.STATE] = (json.dumps(model_card.scrub_local_paths(state), indent=1,
                                                ensure_ascii=False) + "\n").encode()
    for rel, content in ops.items():
        if rel not in _METADATA and not _matches(rel, include):
            continue
        raw = content if isinstance(content, bytes) else Path(content).read_bytes()
        text = raw.decode("utf-8", errors="replace")
        hit = next((p for p in forbidden if p in text), None)
        if hit:
            raise PushError(f"{d / rel}: contains the local path {hit}; remove it from the file (or leave the "
                            "file out) before pushing")
    return sorted(ops.items())


def _token(token: str | None, token_env: str) -> str:
    token = token or os.environ.get(token_env)
    if not token:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise PushError(f"no hub token: set ${token_env} (a write token from "
                        "https://huggingface.co/settings/tokens) or run `huggingface-cli login`")
    return token


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise PushError(f"--repo {repo_id!r}: not a hub repository id ({str(e).splitlines()[0]})") from None
    if repo_id.count("/") != 1:
        raise PushError(f"--repo {repo_id!r}: give it as OWNER/NAME (e.g. me/smollm2-clo-de)")


def push(directory: str | Path, repo_id: str, *, repo_type: str = "auto", private: bool = False,
         revision: str | None = None, message: str | None = None, endpoint: str | None = None,
         token: str | None = None, token_env: str = "HF_TOKEN",
         include: list[str] | tuple[str, ...] = ()) -> dict:
    """Create ``repo_id`` if needed and upload ``directory`` (module docstring); returns
    ``{"repo_id", "repo_type", "url", "commit", "files", "directory"}``."""
    from huggingface_hub import CommitOperationAdd, HfApi

    _check_repo_id(repo_id)
    d = resolve_directory(directory)
    kind = detect_kind(d) if repo_type == "auto" else repo_type
    if kind not in ("model", "dataset"):
        raise PushError(f"--type must be model, dataset or auto, got {repo_type!r}")
    ops = operations(d, kind, repo_id, include)
    if not [rel for rel, _ in ops if rel != "README.md"]:
        raise PushError(f"{d}: nothing clo wrote to upload (looked for {', '.join(MODEL_FILES if kind == 'model' else DATASET_FILES)}; "
                        "--include PATTERN adds others)")
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=_token(token, token_env))
    api.create_repo(repo_id, repo_type=kind, private=private, exist_ok=True)
    info = api.create_commit(repo_id, [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=content)
                                       for rel, content in ops],
                             commit_message=message or f"Upload {kind} with clo push", repo_type=kind,
                             revision=revision)
    url = getattr(info, "commit_url", None) or str(info)
    return {"repo_id": repo_id, "repo_type": kind, "url": url, "commit": getattr(info, "oid", None),
            "files": [rel for rel, _ in ops], "directory": str(d)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0].replace("``", "") + " " + (
        "Only the files clo wrote go up (--include for more); the token comes from $HF_TOKEN "
        "(or --token-env VAR, or a stored `huggingface-cli login`).")
    parser.add_argument("directory", metavar="DIR",
                        help="a model directory (best/), a run directory, or a dataset directory")
    parser.add_argument("--repo", required=True, metavar="ID",
                        help="the hub repository, e.g. me/smollm2-clo-de")
    parser.add_argument("--type", dest="repo_type", default="auto", choices=["auto", "model", "dataset"],
                        help="repository type (auto: told by the directory's files)")
    parser.add_argument("--include", action="append", default=[], metavar="PATTERN",
                        help="also upload the files matching this glob (relative to DIR; repeatable)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", help="branch to commit to (default: main)")
    parser.add_argument("--message", help="commit message")
    parser.add_argument("--endpoint", help="hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument("--token-env", default="HF_TOKEN", help="environment variable holding the token")
    parser.add_argument("--dry-run", action="store_true",
                        help="list what would be uploaded and what is left out; upload nothing")


def main(args) -> int:
    try:
        _check_repo_id(args.repo)
        d = resolve_directory(args.directory)
        kind = detect_kind(d) if args.repo_type == "auto" else args.repo_type
        if args.dry_run:
            ops = operations(d, kind, args.repo, args.include)
            _, left = select_files(d, kind, args.include)
            made = {rel for rel, content in ops if isinstance(content, bytes)}
            print(f"{kind} {d} -> {args.repo}: {len(ops)} files")
            for rel, _ in ops:
                print(f"  {rel}" + ("  (as uploaded: made in memory, no local paths)" if rel in made else ""))
            if left:
                print(f"left out ({len(left)}; not written by clo: --include PATTERN to add):")
                print("\n".join(f"  {rel}" for rel in left))
            return 0
        res = push(d, args.repo, repo_type=kind, private=args.private, revision=args.revision,
                   message=args.message, endpoint=args.endpoint, token_env=args.token_env, include=args.include)
    except PushError as e:
        print(f"clo push: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if type(e).__module__.startswith("huggingface_hub") or "HTTPError" in type(e).__name__:
            print(f"clo push: {args.repo}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}",
                  file=sys.stderr)
            return 2
        raise
    print(f"pushed {res['repo_type']} {res['directory']} -> {res['repo_id']} ({len(res['files'])} files): "
          f"{res['url']}")
    return 0
