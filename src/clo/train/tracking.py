"""Where training metrics go: always a JSON-lines file, plus the trackers ``train.report_to`` asks for.

``log.jsonl`` is the record the report stage reads and is always written; TensorBoard and W&B are
for watching a run and are on only when ``train.report_to`` names them (never because an
environment variable such as ``WANDB_PROJECT`` happens to be set). A requested tracker whose
package is missing is an error before training starts (:func:`check_trackers`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from clo.errors import CloError
from clo.io import atomic_write
from clo.registry import Registry, unknown_name_message

log = logging.getLogger(__name__)


class LogFileError(CloError, ValueError):
    """A ``log.jsonl`` line other than the last that is not a JSON object: names file and line."""


class JsonLog:
    def __init__(self, output_dir: Path, resume_step: int = 0):
        self.path = Path(output_dir) / "log.jsonl"
        if self.path.exists():
            # Entries written after the checkpoint we resume from are replayed by the resumed run.
            kept = [ln for ln in read_log(self.path) if ln[1].get("step", 0) <= resume_step]
            atomic_write(self.path, b"".join(raw + b"\n" for raw, _ in kept))
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
    """A W&B run named after the output directory; project $WANDB_PROJECT, else ``clo``."""

    def __init__(self, output_dir: Path, resume_step: int = 0):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "clo", dir=str(output_dir),
                              name=Path(output_dir).name, resume="allow")

    def log(self, record: dict, step: int) -> None:
        self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self.run.finish()


BACKENDS: Registry[Callable] = Registry("log backend", {"json": JsonLog, "tensorboard": TensorBoardLog,
                                                         "wandb": WandbLog})
#: The trackers of ``train.report_to``: the package each needs, and how to install it.
TRACKERS: Registry[tuple[str, str]] = Registry("tracker", {
    "tensorboard": ("tensorboard", "pip install 'clo[tensorboard]'"),
    "wandb": ("wandb", "pip install wandb"),
})


def requested(report_to: str | Iterable[str] | None) -> list[str]:
    """``train.report_to`` as a list of tracker names ("none", None and [] are no tracker)."""
    if report_to is None or report_to == "none":
        return []
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    return list(dict.fromkeys(n for n in names if n != "none"))


def check_trackers(report_to: str | Iterable[str] | None) -> list[str]:
    """The requested trackers, or a ConfigError naming one that is unknown or whose package is
    not installed, so that a run fails at start-up rather than after loading the model."""
    from clo.config_base import ConfigError

    names = requested(report_to)
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"train.report_to: {unknown_name_message('tracker', name, ['none', *TRACKERS])}")
        package, install = TRACKERS[name]
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"train.report_to: {name} needs the {package} package, which is not installed "
                              f"({install}); or set train.report_to=none")
    return names


class Trackers:
    """The JSON log plus the trackers of ``report_to`` (``train.report_to``), on the main process
    only (``enabled``)."""

    def __init__(self, output_dir: Path, resume_step: int = 0, enabled: bool = True,
                 report_to: str | Iterable[str] | None = "none"):
        self.backends = []
        names = check_trackers(report_to)
        if not enabled:
            return
        for name in ("json", *names):
            self.backends.append(BACKENDS[name](output_dir, resume_step))
        if names:
            log.info("metrics: %s/log.jsonl, %s", output_dir, ", ".join(names))

    def log(self, record: dict, step: int) -> None:
        for b in self.backends:
            b.log(record, step)

    def close(self) -> None:
        for b in self.backends:
            b.close()
