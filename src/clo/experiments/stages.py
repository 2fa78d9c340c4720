"""Done-markers: a stage runs once per set of inputs, so a killed grid resumes where it stopped.

A stage is a function plus a JSON-able description of its inputs. Before the function runs, a
marker ``<name>.started.json`` records the inputs' fingerprint; after it succeeds, a marker
``<name>.done.json`` is written atomically (temp file + rename) with the fingerprint and the
function's result, and the started-marker goes. Next time:

- a done-marker with the same fingerprint means the stage is done: its stored result is returned
  and the function is not called;
- a done- or started-marker with another fingerprint (the config, an input file or the model
  changed) means the stage's outputs were made by other inputs: the stale done-marker and the
  stage's output paths (``clear``, minus ``keep``) are removed, and the stage runs from a clean
  output, so that nothing of the old inputs (a finished trainer's ``result.json``, an evaluation
  cache) can come back;
- a started-marker with the same fingerprint, or no marker at all, is a stage that died midway:
  its partial files are kept and the function resumes from them (training keeps checkpoints,
  evaluation caches items), so redoing it costs only what it had not finished.

``ignore`` names dotted input keys that change how a stage computes, not what (a micro-batch
size, an evaluation batch size): a marker whose stored inputs differ from the current ones only
there counts as the same inputs (done, or resumable), and a done stage keeps its recorded
fingerprint, so that what depends on it does not run again either.

Every marker records :data:`MARKER_FORMAT`, the version of what the grid puts into fingerprints.
A marker of another format cannot be compared with this version's fingerprints (every stage would
look changed and run again from a clean output): :func:`check_marker_format` refuses it instead.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clo.errors import CloError
from clo.fingerprints import fingerprint
from clo.io import write_json

log = logging.getLogger(__name__)

MARKER_SUFFIX = ".done.json"
STARTED_SUFFIX = ".started.json"

#: The version of the stage fingerprints markers record. 2: data files by content, not path (a
#: prebuilt dataset, ``data.path``, the AlpacaEval instructions, each evaluation's data files),
#: and each stage's inputs only what it reads (a prebuilt dataset without the translator,
#: evaluations without the judge's settings unless judged). 3: models by identity, not spec
#: (a local directory by its files' content, a hub id by its commit, an offline name by its
#: package: :func:`clo.experiments.graph.model_inputs`). Markers without one are format 1.
MARKER_FORMAT = 3


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


class MarkerFormatError(CloError):
    """A grid directory holds markers of another fingerprint format (written by another clo)."""


def check_marker_format(markers: Iterable[Path]) -> None:
    """Refuse a grid directory whose done- or started-markers (of those given, and those next to
    them) record another :data:`MARKER_FORMAT`: their fingerprints cannot be matched to this
    version's, and reusing or silently clearing their results would both be wrong."""
    old: list[tuple[Path, Any]] = []
    for marker in markers:
        for path in (Path(marker), started_path(marker)):
            m = read_marker(path)
            if m is not None and m.get("format", 1) != MARKER_FORMAT:
                old.append((path, m.get("format", 1)))
    if old:
        path, fmt = old[0]
        raise MarkerFormatError(
            f"{path}: a stage marker of fingerprint format {fmt} ({len(old)} such marker(s) in all), written by "
            f"another version of clo; this one writes format {MARKER_FORMAT} and cannot tell whether those results "
            "match their inputs: run the grid into a new output directory (--output DIR), or remove the old one")


class StageNotDone(RuntimeError):
    """A stage another job runs (see ``only`` in :func:`clo.experiments.grid.run_grid`) has no
    done-marker for these inputs: what depends on it cannot run in this job."""

    def __init__(self, name: str, why: str = "not done") -> None:
        super().__init__(f"{name}: {why}")
        self.stage = name


def is_done(path: Path, fp: str) -> bool:
    m = read_marker(path)
    return m is not None and m["fingerprint"] == fp


def started_path(marker: Path) -> Path:
    """The started-marker next to a done-marker: ``x.done.json`` -> ``x.started.json``."""
    marker = Path(marker)
    base = marker.name[: -len(MARKER_SUFFIX)] if marker.name.endswith(MARKER_SUFFIX) else marker.stem
    return marker.with_name(base + STARTED_SUFFIX)


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two JSON-like trees (a list differs as a whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                out.append(key)
            else:
                out.extend(changed_keys(old[k], new[k], key))
        return out
    # Compare as the marker stores them (JSON), so that a tuple equals its list.
    same = json.dumps(old, sort_keys=True, default=str) == json.dumps(new, sort_keys=True, default=str)
    return [] if same else [prefix or "(inputs)"]


def _normalised(obj: Any) -> Any:
    """``obj`` as a marker stores it (JSON), for comparing with stored inputs."""
    return json.loads(json.dumps(obj, ensure_ascii=False, default=str))


def _same_inputs(m: dict, fp: str, inputs: Any, ignore: tuple[str, ...]) -> bool:
    """Whether marker ``m`` was made by these inputs: the same fingerprint, or (with ``ignore``)
    stored inputs that differ only in ignored keys."""
    if m["fingerprint"] == fp:
        return True
    if not ignore or "inputs" not in m:
        return False
    return all(any(k == pat or k.startswith(pat + ".") for pat in ignore)
               for k in changed_keys(m["inputs"], _normalised(inputs)))


def _describe_change(old_inputs: Any, new_inputs: Any, limit: int = 8) -> str:
    keys = changed_keys(old_inputs, new_inputs) if old_inputs is not None else []
    if not keys:
        return "inputs changed"
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return "changed: " + ", ".join(keys[:limit]) + more


def clear_outputs(marker: Path, paths: Iterable[Path], keep: Iterable[str] = (),
                  protect: Iterable[Path] = ()) -> list[Path]:
    """Remove a stage's outputs; the paths removed.

    A path must be the marker's directory or lie inside it (a stage's outputs sit next to or
    around its marker): anything else is refused, so that a wrong path can never delete outside
    the stage. A directory goes whole, but for its top-level entries matching a ``keep`` glob
    (content-addressed caches such as the translation cache) and the ``protect`` paths (the
    stage's own markers when they sit inside it).
    """
    root = Path(marker).parent.resolve()
    keep = tuple(keep)
    protect = {Path(p).resolve() for p in protect}
    removed: list[Path] = []

    def remove(p: Path, depth: int) -> None:
        rp = p.parent.resolve() / p.name  # a link itself, not what it points to
        if rp in protect or (depth == 1 and any(p.match(pat) for pat in keep)):
            return
        if p.is_symlink() or p.is_file():
            p.unlink()
            removed.append(p)
        elif p.is_dir():
            if (depth == 0 and keep) or any(rp in q.parents for q in protect):
                for child in sorted(p.iterdir()):
                    remove(child, depth + 1)
            else:
                shutil.rmtree(p)
                removed.append(p)

    for p in paths:
        p = Path(p)
        rp = p.resolve()
        if rp != root and root not in rp.parents:
            raise ValueError(f"refusing to clear {p}: not inside the stage's directory {root}")
        remove(p, 0)
    return removed


def run_stage(
    name: str, marker: Path, inputs: Any, fn: Callable[[], Any], *,
    clear: Iterable[Path] = (), keep: Iterable[str] = (), ignore: Iterable[str] = (),
) -> tuple[Any, str, bool]:
    """Run ``fn`` unless ``marker`` records the same inputs; (result, fingerprint, ran).

    ``clear``: the stage's outputs, removed (but for ``keep`` globs) before ``fn`` runs when an
    earlier run had other inputs (see the module docstring); never on a first run or a resume.
    ``ignore``: dotted input keys whose changes do not count (see the module docstring).
    """
    marker = Path(marker)
    ignore = tuple(ignore)
    fp = fingerprint(inputs)
    done = read_marker(marker)
    if done is not None and _same_inputs(done, fp, inputs, ignore):
        log.info("%s: done (%s), skipped", name, marker)
        return done.get("result"), done["fingerprint"], False
    started_at = started_path(marker)
    started = read_marker(started_at)
    # A started-marker still "clearing" was killed while removing the old outputs: not clean yet.
    stale = next((m for m in (done, started) if m is not None and (
        m.get("clearing") or not _same_inputs(m, fp, inputs, ignore))), None)
    state = {"stage": name, "format": MARKER_FORMAT, "fingerprint": fp, "inputs": inputs,
             "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if stale is not None:
        what = ("an earlier clearing was interrupted" if stale.get("clearing")
                else _describe_change(stale.get("inputs"), inputs))
        # In this order, a kill at any point leaves a marker that makes the next run clear again:
        # never a done-marker of the old inputs over half-removed outputs, nor a resumable
        # started-marker over the old inputs' files.
        write_json(started_at, {**state, "clearing": True})
        marker.unlink(missing_ok=True)
        removed = clear_outputs(marker, clear, keep, protect=[started_at])
        log.info("%s: %s since the last run (%s -> %s); cleared %d output(s), running again",
                 name, what, stale["fingerprint"], fp, len(removed))
    elif started is not None:
        log.info("%s: resuming an unfinished run with the same inputs (%s)", name, fp)
    write_json(started_at, state)
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    write_json(marker, {
        "stage": name, "format": MARKER_FORMAT, "fingerprint": fp, "inputs": inputs, "result": result,
        # CPU seconds next to wall seconds: on a shared machine the wall time says little.
        "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    started_at.unlink(missing_ok=True)
    log.info("%s: finished in %.1fs", name, seconds)
    return result, fp, True


def lookup_stage(name: str, marker: Path, inputs: Any, *, ignore: Iterable[str] = ()) -> tuple[Any, str]:
    """The stored (result, fingerprint) of a stage done with these inputs (as :func:`run_stage`
    would skip it), without running or clearing anything; :class:`StageNotDone` otherwise."""
    fp = fingerprint(inputs)
    done = read_marker(Path(marker))
    if done is not None and _same_inputs(done, fp, inputs, tuple(ignore)):
        return done.get("result"), done["fingerprint"]
    raise StageNotDone(name, "not done" if done is None else "done with other inputs")
