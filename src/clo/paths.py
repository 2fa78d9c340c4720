"""Where the shared evaluation and demo data lives: ``$CLO_SHARED_DATA``, else a ``shared/data``
folder beside the repository or any of its parents (a checkout at ``~/src/clo`` finds
``~/src/shared/data``). The layout: ``belebele/``, ``mmlu/``, ``language_confusion/``, ``sft_en/``."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    # src/clo/paths.py -> the repository (an editable or source install); the working directory otherwise.
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def shared_data_candidates() -> list[Path]:
    env = os.environ.get("CLO_SHARED_DATA")
    if env:
        return [Path(env)]
    root = repo_root()
    return [p / "shared" / "data" for p in (root, *root.parents)]


def shared_data_dir() -> Path:
    candidates = shared_data_candidates()
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f"shared data directory not found (looked in {', '.join(map(str, candidates))}); set "
        "CLO_SHARED_DATA to a directory laid out like shared/data (belebele/, mmlu/, language_confusion/, sft_en/)"
    )
