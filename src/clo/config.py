"""Typed configuration: YAML in, validated, with command-line overrides.

Each stage owns its section (``clo.data.config``, ``clo.train.config``, ``clo.eval.config``);
this module composes them and turns every validation problem into one error that names the file
and the dotted key (``configs/x.yaml: train.beta: Input should be a valid number``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from clo.config_base import ConfigError, StrictModel, read_yaml, unknown_key_message
from clo.data.config import DataConfig
from clo.eval.config import EvalConfig
from clo.train.config import TrainConfig

__all__ = ["Config", "ConfigError", "StrictModel", "config_from_dict", "dump_config", "load_config", "set_dotted"]


class Config(StrictModel):
    model: str = Field("smollm2-135m-instruct", description="hub id, local directory or offline model name")
    # Before `lang`: pydantic validates fields in order, and `lang` may name a language this file adds.
    languages_file: str | None = Field(None, description="YAML file adding/overriding languages (clo languages --help)")
    lang: str | list[str] = Field(
        "de", description="target language, ISO 639-1 code from clo.languages; a list of two or more codes "
                          "(or 'sw+yo') trains on every one of them at once (docs/train.md, Several target languages)")
    output_dir: str = "runs/default"
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("languages_file")
    @classmethod
    def _load_languages(cls, v: str | None) -> str | None:
        if v:
            from clo import languages

            try:
                languages.load_file(v)
            except ConfigError as e:
                raise ValueError(str(e)) from None
        return v

    @field_validator("lang")
    @classmethod
    def _known_language(cls, v: str | list[str]) -> str | list[str]:
        from clo import languages

        multi = isinstance(v, list) or "+" in v
        codes = (v if isinstance(v, list) else v.split("+")) if multi else [v]
        try:
            codes = [languages.get(c).code for c in codes]
        except KeyError as e:
            raise ValueError(e.args[0]) from None
        if not codes:
            raise ValueError("lang: give at least one language code")
        if not multi or len(codes) == 1:
            return codes[0]
        if len(set(codes)) != len(codes):
            raise ValueError(f"lang: {codes} names a language twice")
        if "en" in codes:
            raise ValueError("lang: English is every example's source language, not a target of a multilingual run")
        return codes

    @property
    def langs(self) -> list[str]:
        """The target languages: ``[lang]`` for one, the list for a multilingual run."""
        return list(self.lang) if isinstance(self.lang, list) else [self.lang]


def error_source(loc, source: str, overridden: Iterable[tuple[list[str], str]] = ()) -> str:
    """Where the value at ``loc`` came from: the ``--set`` flag that set it (or a section above
    it), else ``source`` (the YAML file, or ``<defaults>``)."""
    parts = [str(p) for p in loc]
    best, best_len = source, -1
    for path, flag in overridden:
        if len(path) > best_len and parts[: len(path)] == list(path):
            best, best_len = flag, len(path)
    return best


def _format_errors(err: ValidationError, source: str, model: type[BaseModel] | None = None,
                   overridden: Iterable[tuple[list[str], str]] = ()) -> str:
    """One line per problem, ``SOURCE: dotted.key: message``; an unknown key names the closest
    known one (``train.betta: unknown key; did you mean train.beta?``); SOURCE is the ``--set``
    flag where one set the key."""
    model = Config if model is None else model
    overridden = list(overridden)
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = unknown_key_message(model, e["loc"]) if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{error_source(e['loc'], source, overridden)}: {key}: {msg}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.beta=0.2`` -> (["train", "beta"], 0.2); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.beta=0.2")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {e}") from None
    return key.split("."), value


def set_dotted(tree: dict, key: str | list[str], value: Any, source: str) -> None:
    """Set ``train.beta`` (or ``["train", "beta"]``) in a nested dict, creating sections."""
    path = key.split(".") if isinstance(key, str) else key
    node = tree
    for i, part in enumerate(path[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{source}: {'.'.join(path[: i + 1])} is not a section")
        node = nxt
    node[path[-1]] = value


def config_from_dict(tree: dict, source: str = "<dict>", overrides: Iterable[str] = ()) -> Config:
    tree = dict(tree or {})
    overridden = []
    for ov in overrides:
        path, value = parse_override(ov)
        set_dotted(tree, path, value, f"--set {ov}")
        overridden.append((path, f"--set {ov}"))
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source, overridden=overridden)) from None


def load_yaml(path: str | Path) -> dict:
    return read_yaml(path, "config")


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the YAML file (if any), then ``--set`` overrides, validated together."""
    tree = load_yaml(path) if path is not None else {}
    return config_from_dict(tree, str(path) if path is not None else "<defaults>", overrides)


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
