"""``clo push DIR --repo ID``: upload a trained model or a built dataset to the Hugging Face hub.

``DIR`` is a model directory (``best/``: ``config.json`` / ``adapter_config.json`` and weights),
a run directory (its ``best/`` is pushed), or a dataset directory of ``clo data build`` (its
``train``/``validation`` files, subsets, summary; the translation cache is left out). The
repository is created when it does not exist (``--private`` for a private one), then the
directory is uploaded in one commit with ``huggingface_hub``'s ``HfApi.upload_folder``.

- The token is read from the environment: ``$HF_TOKEN`` (``--token-env`` names another
  variable), else the token ``huggingface-cli login`` stored.
- ``--endpoint`` (or ``$HF_ENDPOINT``) points at another hub (a mirror, a local test server).
- A model without a card gets one first (:func:`clo.train.card.write_model_card`, from the run's
  ``result.json`` and ``run.json``); a dataset without one gets a dataset card naming its splits.
- Never uploaded: temporary files (``*.tmp``), hidden files, the translation cache
  (``*.sqlite*``), training state (``last/``, ``state.pt``, optimizer files).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

HELP = "upload a model or dataset directory to the Hugging Face hub (token from $HF_TOKEN)"

IGNORE_PATTERNS = ["*.tmp", "*.tmp/*", "**/*.tmp", ".*", "**/.*", "*.sqlite", "*.sqlite-*", "**/*.sqlite*",
                   "translations.sqlite*", "last/*", "state.pt", "optimizer.pt", "scheduler.pt",
                   "rng_state*.pth", "*.broken-*"]
_MODEL_FILES = ("config.json", "adapter_config.json")
_DATA_FILES = ("train.jsonl", "train.parquet", "validation.jsonl", "validation.parquet", "checked.jsonl",
               "summary.json", "build.json")


class PushError(ValueError):
    """A directory that cannot be pushed as asked, or no token; the message says what to do."""


def resolve_directory(directory: str | Path) -> Path:
    """The directory to upload: ``DIR`` itself, or ``DIR/best`` for a run directory."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such directory")
    if not any((d / f).is_file() for f in _MODEL_FILES) and (d / "best").is_dir():
        return d / "best"
    return d


def detect_kind(d: Path) -> str:
    """``model`` or ``dataset``, by the files a model or a clo dataset directory has."""
    if any((d / f).is_file() for f in _MODEL_FILES):
        return "model"
    if any((d / f).is_file() for f in _DATA_FILES) or any(d.glob("*.jsonl")) or any(d.glob("*.parquet")):
        return "dataset"
    raise PushError(f"{d}: neither a model (config.json, adapter_config.json) nor a dataset directory "
                    "(train.jsonl, *.jsonl, *.parquet); pass --type model or --type dataset")


def files_to_upload(d: Path) -> list[str]:
    """The paths (relative, sorted) that ``push`` uploads from ``d``, after :data:`IGNORE_PATTERNS`."""
    from huggingface_hub.utils import filter_repo_objects

    rel = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
    return list(filter_repo_objects(rel, ignore_patterns=IGNORE_PATTERNS))


def _dataset_card(d: Path, repo_id: str) -> str:
    summary = {}
    if (d / "summary.json").is_file():
        try:
            summary = json.loads((d / "summary.json").read_text(encoding="utf-8"))
        except ValueError:
            summary = {}
    lang = summary.get("tgt_lang")
    splits = []
    for split in ("train", "validation"):
        for ext in ("jsonl", "parquet"):
            if (d / f"{split}.{ext}").is_file():
                splits.append((split, f"{split}.{ext}"))
    if not splits and (d / "checked.jsonl").is_file():
        splits.append(("train", "checked.jsonl"))
    front = ["---", "language:", "- en"] + ([f"- {lang.split('-')[0]}"] if lang and lang != "en" else [])
    front += ["tags:", "- clo", "- cross-lingual", "- translation"]
    if splits:
        front += ["configs:", "- config_name: default", "  data_files:"]
        for split, path in splits:
            front += [f"  - split: {split}", f"    path: {path}"]
    front += ["---", ""]
    lines = [f"# {repo_id}", "",
             ("Cross-lingual instruction data made with clo: each record is an English instruction pair and "
              f"its machine translation{f' into `{lang}`' if lang else ''}, "
              "`{id, source, tgt_lang, x_en, y_en, x_tgt, y_tgt, meta}` (`meta.checks`: the quality checks "
              "every record passed)."), ""]
    if summary:
        lines += ["| | |", "|---|---|"]
        for k in ("source", "records_in", "records_out", "train", "validation", "translator"):
            if k in summary:
                lines.append(f"| {k} | {summary[k]} |")
        lines.append("")
    return "\n".join(front + lines)


def _ensure_card(d: Path, kind: str, repo_id: str) -> None:
    if (d / "README.md").is_file():
        return
    if kind == "model":
        if (d.parent / "result.json").is_file() or (d.parent / "run.json").is_file():
            from clo.train.card import write_model_card

            write_model_card(d)
            log.info("%s: wrote a model card (README.md) from the run's result.json and run.json", d)
        else:
            log.warning("%s: no model card (README.md); the hub page will be empty", d)
    else:
        (d / "README.md").write_text(_dataset_card(d, repo_id), encoding="utf-8")
        log.info("%s: wrote a dataset card (README.md)", d)


def _token(token: str | None, token_env: str) -> str:
    token = token or os.environ.get(token_env)
    if not token:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise PushError(f"no hub token: set ${token_env} (a write token from "
                        "https://huggingface.co/settings/tokens) or run `huggingface-cli login`")
    return token


def push(directory: str | Path, repo_id: str, *, repo_type: str = "auto", private: bool = False,
         revision: str | None = None, message: str | None = None, endpoint: str | None = None,
         token: str | None = None, token_env: str = "HF_TOKEN", write_card: bool = True) -> dict:
    """Create ``repo_id`` if needed and upload ``directory`` (module docstring); returns
    ``{"repo_id", "repo_type", "url", "commit", "files"}``."""
    from huggingface_hub import HfApi

    d = resolve_directory(directory)
    kind = detect_kind(d) if repo_type == "auto" else repo_type
    if kind not in ("model", "dataset"):
        raise PushError(f"--type must be model, dataset or auto, got {repo_type!r}")
    if write_card:
        _ensure_card(d, kind, repo_id)
    files = files_to_upload(d)
    if not files:
        raise PushError(f"{d}: nothing to upload (every file is ignored: {', '.join(IGNORE_PATTERNS)})")
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=_token(token, token_env))
    api.create_repo(repo_id, repo_type=kind, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(d), repo_id=repo_id, repo_type=kind, revision=revision,
                             commit_message=message or f"Upload {kind} with clo push",
                             ignore_patterns=IGNORE_PATTERNS)
    url = getattr(info, "commit_url", None) or str(info)
    return {"repo_id": repo_id, "repo_type": kind, "url": url, "commit": getattr(info, "oid", None),
            "files": files, "directory": str(d)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0].replace("``", "") + " " + (
        "The token comes from $HF_TOKEN (or --token-env VAR, or a stored `huggingface-cli login`).")
    parser.add_argument("directory", metavar="DIR",
                        help="a model directory (best/), a run directory, or a dataset directory")
    parser.add_argument("--repo", required=True, metavar="ID",
                        help="the hub repository, e.g. me/smollm2-clo-de")
    parser.add_argument("--type", dest="repo_type", default="auto", choices=["auto", "model", "dataset"],
                        help="repository type (auto: told by the directory's files)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", help="branch to commit to (default: main)")
    parser.add_argument("--message", help="commit message")
    parser.add_argument("--endpoint", help="hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    parser.add_argument("--token-env", default="HF_TOKEN", help="environment variable holding the token")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")


def main(args) -> int:
    try:
        d = resolve_directory(args.directory)
        kind = detect_kind(d) if args.repo_type == "auto" else args.repo_type
        if args.dry_run:
            files = files_to_upload(d)
            card = "" if (d / "README.md").is_file() else " (+ README.md, a card written first)"
            print(f"{kind} {d} -> {args.repo}: {len(files)} files{card}")
            print("\n".join(f"  {f}" for f in files))
            return 0
        res = push(d, args.repo, repo_type=kind, private=args.private, revision=args.revision,
                   message=args.message, endpoint=args.endpoint, token_env=args.token_env)
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
