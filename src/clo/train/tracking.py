"""Where training metrics go: always a JSON-lines file, plus TensorBoard / W&B when installed.

One registry entry per backend; a backend whose package is missing is skipped with one log line
(the JSON file is the record the report stage reads, the others are for watching a run).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class LogFileError(ValueError):
    """A ``log.jsonl`` line other than the last that is not a JSON object: names file and line."""


class JsonLog:
    def __init__(self, output_dir: Path, resume_step: int = 0):
        self.path = Path(output_dir) / "log.jsonl"
        if self.path.exists():
            # Entries written after the checkpoint we resume from are replayed by the resumed run.
            kept = [ln for ln in read_log(self.path) if ln[1].get("step", 0) <= resume_step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(b"".join(raw + b"\n" for raw, _ in kept))
            tmp.replace(self.path)
        self._f = self.path.open("a", encoding="utf-8")

    def log(self, record: dict, step: int) -> None:
        self._f.write(json.dumps({"step": step, **record}, allow_nan=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_log(path: Path) -> list[tuple[bytes, dict]]:
    """``(raw line, entry)`` of every entry of a ``log.jsonl``. A torn last line (a run killed
    mid-write) is dropped with a warning; any other line that is not a JSON object is a
    :class:`LogFileError` naming the file and line, since the entries after it are real."""
    lines = [(n, raw) for n, raw in enumerate(Path(path).read_bytes().split(b"\n"), 1) if raw.strip()]
    out = []
    for k, (n, raw) in enumerate(lines):
        try:
            obj = json.loads(raw)
        except ValueError:  # malformed JSON, or bytes cut inside a UTF-8 character
            obj = None
        if isinstance(obj, dict):
            out.append((raw, obj))
        elif k == len(lines) - 1:
            log.warning("%s:%d: torn last line dropped (a run killed mid-write)", path, n)
        else:
            raise LogFileError(f"{path}:{n}: not a JSON object; fix or delete the line to resume")
    return out


class TensorBoardLog:
    def __init__(self, output_dir: Path, resume_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.w = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=resume_step + 1)

    def log(self, record: dict, step: int) -> None:
        for k, v in record.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.w.add_scalar(k, v, step)

    def close(self) -> None:
        self.w.close()


class WandbLog:
    def __init__(self, output_dir: Path, resume_step: int = 0):
        if not os.environ.get("WANDB_PROJECT"):
            raise ImportError("WANDB_PROJECT not set")
        import wandb

        self.run = wandb.init(dir=str(output_dir), name=Path(output_dir).name, resume="allow")

    def log(self, record: dict, step: int) -> None:
        self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self.run.finish()


BACKENDS: dict[str, Callable] = {"json": JsonLog, "tensorboard": TensorBoardLog, "wandb": WandbLog}


class Trackers:
    def __init__(self, output_dir: Path, resume_step: int = 0, enabled: bool = True):
        self.backends = []
        if not enabled:
            return
        for name, cls in BACKENDS.items():
            try:
                self.backends.append(cls(output_dir, resume_step))
            except ImportError as e:
                log.debug("metrics backend %s off: %s", name, e)

    def log(self, record: dict, step: int) -> None:
        for b in self.backends:
            b.log(record, step)

    def close(self) -> None:
        for b in self.backends:
            b.close()
