"""The base of every config section, apart from clo.config so that sections import it freely."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration problem, naming its source (file or override) and key."""


class StrictModel(BaseModel):
    """Unknown keys are errors; assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def registered(value: str, names: Iterable[str], what: str) -> str:
    """``value`` if it names an entry of a registry, else a ValueError listing the known names
    (in a pydantic validator, pydantic adds the file and key)."""
    names = list(names)
    if value not in names:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(names)}")
    return value
