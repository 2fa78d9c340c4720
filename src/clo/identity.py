"""What a model is: the content of its files, or the hub commit of a hub id.

Every stage that reuses a result for a model (a training directory's ``run.json``, the reference
log-prob cache, an evaluation's item cache, a grid marker, a data build's translator) names the
model by :func:`model_identity`:

- a local directory (a checkpoint, an offline model's converted directory): the SHA-256 over the
  relative names and SHA-256 digests of its files (hidden files and the card files that
  evaluations rewrite, README.md, trainer_state.json and eval_results.json, left out). Swapping a
  checkpoint's weights for others of the same size with the times preserved changes it.
- a hub id: the commit it resolves to (the hub's answer; offline, the commit of the cached
  snapshot that ``from_pretrained`` would load).
- a model held in memory (an evaluation of a ``(model, tokenizer)`` pair): a digest of a sample of
  its parameters (:func:`loaded_model_digest`).

A file's digest is computed once and kept under ``$CLO_CACHE/digests`` keyed on its device,
inode, size, modification and change times (``st_ctime_ns``, which no copy or ``touch -r``
carries over): a file rewritten in place, a copy or a restored timestamp is read again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path

from clo.fingerprints import sha256_file
from clo.io import write_json
from clo.offline_models import OFFLINE_MODELS, offline_model_dir
from clo.paths import cache_root

log = logging.getLogger(__name__)

# Files in a checkpoint directory that describe the model but are not it: clo rewrites them as
# evaluations finish, and they must not change the model's identity.
CARD_FILES = frozenset({"README.md", "trainer_state.json", "eval_results.json", ".complete"})


def _digest_cache() -> Path:
    return cache_root() / "digests"


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read once per (device, inode, size, mtime_ns, ctime_ns)."""
    path = Path(path)
    key = _stat_key(path)
    entry = _digest_cache() / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    try:
        cached = json.loads(entry.read_text(encoding="utf-8"))
        if cached.get("key") == key and isinstance(cached.get("sha256"), str):
            return cached["sha256"]
    except (OSError, ValueError):
        pass  # no entry yet, or a torn one: read the file
    digest = sha256_file(path)
    if _stat_key(path) != key:  # changed while it was read: do not remember either
        return digest
    try:
        write_json(entry, {"key": key, "sha256": digest, "name": path.name}, fsync=False)
    except OSError as e:  # a read-only cache costs time, not correctness
        log.debug("cannot cache the digest of %s: %s", path, e)
    return digest


def model_files(directory: str | Path) -> list[Path]:
    """The files that make the model in ``directory``: all but hidden ones and :data:`CARD_FILES`."""
    directory = Path(directory)
    out = []
    for f in sorted(directory.rglob("*")):
        rel = f.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts) or rel.as_posix() in CARD_FILES:
            continue
        if f.is_file():
            out.append(f)
    return out


def directory_identity(directory: str | Path) -> dict:
    """``{"sha256", "files"}`` of the model files of a directory (no path in it: a moved or copied
    checkpoint is the same model)."""
    directory = Path(directory)
    files = model_files(directory)
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(directory).as_posix().encode("utf-8") + b"\0")
        h.update(file_digest(f).encode("ascii") + b"\n")
    return {"sha256": h.hexdigest(), "files": len(files)}


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return bool(constants.HF_HUB_OFFLINE) or env


@functools.lru_cache(maxsize=64)
def _hub_revision_online(repo_id: str) -> str | None:
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(repo_id, timeout=10).sha
    except Exception as e:  # noqa: BLE001 - no network (the client's own error types), a gated repo: the cache is asked
        log.debug("hub revision of %s: %s", repo_id, e)
        return None


def cached_revision(repo_id: str, cache_dir: str | Path | None = None) -> str | None:
    """The commit of the snapshot of ``repo_id`` (its ``main``) in the local hub cache, or None."""
    from huggingface_hub import constants, try_to_load_from_cache

    for filename in ("config.json", "adapter_config.json", "tokenizer_config.json"):
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir or constants.HF_HUB_CACHE)
        if isinstance(found, str):
            return Path(found).parent.name  # .../snapshots/<commit>/config.json
    return None


def hub_revision(repo_id: str) -> str | None:
    """The commit a hub id resolves to: the hub's answer, else (offline, unreachable) the cached
    snapshot's; None when neither knows it."""
    if not _offline():
        sha = _hub_revision_online(repo_id)
        if sha:
            return sha
    return cached_revision(repo_id)


def is_hub_id(spec: str) -> bool:
    """Whether ``spec`` is spelled as a hub id (``name`` or ``owner/name``, not a path): what a spec
    that is neither an offline name nor a directory must be."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if spec.startswith((".", "~", "/")) or spec.count("/") > 1:
        return False
    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True


def model_identity(spec: str) -> dict:
    """What a model spec is (see the module docstring): ``{"sha256", "files"}`` for a directory or
    an offline name, ``{"hub": id, "revision": commit or None}`` for a hub id, else ``{"spec"}``."""
    spec = str(spec)
    path = offline_model_dir(spec) if spec in OFFLINE_MODELS else Path(spec).expanduser()
    if path.is_dir():
        return directory_identity(path)
    if is_hub_id(spec):
        return {"hub": spec, "revision": hub_revision(spec)}
    return {"spec": spec}


def model_digest(spec: str) -> str:
    """A short digest of :func:`model_identity` (16 hex digits), for names and labels."""
    blob = json.dumps(model_identity(spec), sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def model_label(spec: str) -> str:
    """How results name the model of ``spec``: ``<spec>@<model_digest>`` when its content or hub
    commit is known (a checkpoint directory overwritten by another training is another label),
    else the spec. A label names; fingerprints use :func:`model_identity`, which has no path."""
    ident = model_identity(spec)
    if "sha256" in ident or ident.get("revision"):
        return f"{spec}@{model_digest(spec)}"
    return str(spec)


def loaded_model_digest(model) -> str:
    """A digest (16 hex digits) of a model held in memory, which has no files to digest: each
    parameter's name and its first and last 64 values (a full pass over a 7B model's weights would
    cost more than the evaluation it keys)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        h.update(name.encode())
        h.update(flat[:64].float().cpu().numpy().tobytes())
        h.update(flat[-64:].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def loaded_model_label(model) -> str:
    """How results name a model held in memory: its ``_name_or_path`` (else its class) and
    :func:`loaded_model_digest`."""
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    return f"{name}@{loaded_model_digest(model)}"
