"""Done-markers: a stage runs once per set of inputs, so a killed grid resumes where it stopped.

A stage is a function plus a JSON-able description of its inputs. After the function succeeds, a
marker ``<name>.done.json`` is written atomically (temp file + rename) with the inputs'
fingerprint and the function's result. Next time, a marker with the same fingerprint means the
stage is done: its stored result is returned and the function is not called. A marker with a
different fingerprint (the config changed) is redone. A stage that dies midway leaves no marker,
whatever partial files it wrote; stages are themselves resumable (training keeps checkpoints,
evaluation caches records), so redoing one costs only what it had not finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MARKER_SUFFIX = ".done.json"


def fingerprint(inputs: Any) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON of ``inputs``."""
    blob = json.dumps(inputs, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def write_json_atomic(path: Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def marker_path(directory: Path, name: str) -> Path:
    return Path(directory) / f"{name}{MARKER_SUFFIX}"


def read_marker(path: Path) -> dict | None:
    """The marker's content, or None when absent or unreadable (an unreadable marker is not done)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s: unreadable done-marker; the stage will run again", path)
        return None
    return obj if isinstance(obj, dict) and "fingerprint" in obj else None


def is_done(path: Path, fp: str) -> bool:
    m = read_marker(path)
    return m is not None and m["fingerprint"] == fp


def run_stage(name: str, marker: Path, inputs: Any, fn: Callable[[], Any]) -> tuple[Any, str, bool]:
    """Run ``fn`` unless ``marker`` records the same inputs; (result, fingerprint, ran)."""
    fp = fingerprint(inputs)
    done = read_marker(marker)
    if done is not None and done["fingerprint"] == fp:
        log.info("%s: done (%s), skipped", name, marker)
        return done.get("result"), fp, False
    if done is not None:
        log.info("%s: inputs changed since the last run (%s -> %s); running again", name, done["fingerprint"], fp)
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    write_json_atomic(marker, {
        "stage": name, "fingerprint": fp, "inputs": inputs, "result": result,
        # CPU seconds next to wall seconds: on a shared machine the wall time says little.
        "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    log.info("%s: finished in %.1fs", name, seconds)
    return result, fp, True
