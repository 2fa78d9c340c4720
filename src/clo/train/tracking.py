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


class JsonLog:
    def __init__(self, output_dir: Path, resume_step: int = 0):
        self.path = Path(output_dir) / "log.jsonl"
        if self.path.exists():
            # Entries written after the checkpoint we resume from are replayed by the resumed run.
            kept = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        self._f = self.path.open("a", encoding="utf-8")

    def log(self, record: dict, step: int) -> None:
        self._f.write(json.dumps({"step": step, **record}, allow_nan=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


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
