"""The base of every config section, apart from clo.config so that sections import it freely."""

from __future__ import annotations

import functools
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

from clo.errors import CloError

__all__ = ["ConfigError", "StrictModel", "closest_key", "dotted_keys", "registered", "unknown_key_message"]


class ConfigError(CloError, ValueError):
    """A configuration problem, naming its source (file or override) and key."""


class StrictModel(BaseModel):
    """Unknown keys are errors; assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def registered(value: str, names: Iterable[str], what: str) -> str:
    """``value`` if it names an entry of a registry, else a ValueError listing the known names
    (in a pydantic validator, pydantic adds the file and key)."""
    from clo.registry import unknown_name_message

    names = list(names)
    if value not in names:
        raise ValueError(unknown_name_message(what, value, names))
    return value


def _submodel(annotation):
    """The StrictModel class inside a field's annotation (``X``, ``X | None``), if any."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def dotted_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of ``model`` and its sections, dotted (``train.beta``, ``data.translator.kind``)."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        sub = _submodel(field.annotation)
        if sub is not None:
            keys += dotted_keys(sub, f"{prefix}{name}.")
    return keys


def closest_key(model: type[BaseModel], loc: Iterable) -> str | None:
    """The valid dotted key closest to the unknown one at ``loc`` (a pydantic error location):
    a sibling of a similar name (``train.betta`` -> ``train.beta``), else a key of a similar
    full name or last part anywhere (``beta`` -> ``train.beta``, ``data.lr`` -> ``train.lr``)."""
    import difflib

    parts = [str(p) for p in loc if not isinstance(p, int)]
    if not parts:
        return None
    keys = dotted_keys(model)
    parent, last = ".".join(parts[:-1]), parts[-1]
    siblings = [k for k in keys if k.rpartition(".")[0] == parent]
    names = [k.rpartition(".")[2] for k in siblings]
    hit = difflib.get_close_matches(last, names, n=1, cutoff=0.6)
    if hit:
        return siblings[names.index(hit[0])]
    full = difflib.get_close_matches(".".join(parts), keys, n=1, cutoff=0.8)
    if full:
        return full[0]
    by_last = {}
    for k in keys:
        by_last.setdefault(k.rpartition(".")[2], k)
    hit = difflib.get_close_matches(last, list(by_last), n=1, cutoff=0.8)
    return by_last[hit[0]] if hit else None


def unknown_key_message(model: type[BaseModel], loc: Iterable) -> str:
    """``unknown key``, with ``; did you mean train.beta?`` when a valid key is close."""
    hint = closest_key(model, loc)
    return f"unknown key; did you mean {hint}?" if hint else "unknown key"


class _DuplicateKey(Exception):
    def __init__(self, key, line: int, first: int):
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


@functools.cache
def _unique_keys_loader():
    """A safe YAML loader that refuses a key given twice in one mapping (YAML's own rule, which
    PyYAML does not enforce: it keeps the last value silently)."""
    import yaml

    # The C loader where libyaml is built in: the shipped languages file is large.
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class UniqueKeyLoader(base):
        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base constructor reports it
                    continue
                if first is not None:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1, first)
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def read_yaml(path, what: str = "config", mapping: str = "a mapping") -> dict:
    """The YAML mapping in ``path`` (empty file: ``{}``); every failure a :class:`ConfigError`
    naming the file (and line): missing, not UTF-8, invalid YAML, not ``mapping`` at the top."""
    from pathlib import Path

    import yaml

    from clo.errors import located
    from clo.io import read_text

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what} file")
    text = read_text(path, error=located(ConfigError))
    try:
        tree = yaml.load(text, Loader=_unique_keys_loader())
    except _DuplicateKey as e:
        raise ConfigError(f"{path}:{e.line}: {e.key}: given twice (first on line {e.first}); keep one") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        # PyYAML's message runs over several lines (context, marks); the problem is one of them.
        problem = getattr(e, "problem", None) or " ".join(str(e).split())
        column = f" (column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}{column}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be {mapping}, got {type(tree).__name__}")
    return tree
