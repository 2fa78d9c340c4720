"""The language registry: one entry per language, every resource's code and every prompt text.

The API names languages by a registry code: ISO 639-1 where the language has one (``de``, ``sw``),
else ISO 639-3 (``ceb``, ``acm``), with a script suffix for a second script of a language
(``zh-Hant``, ``hi-Latn``). Each resource has its own code (FLORES/BELEBELE ``swh_Latn``, MMMLU
``SW_KE``, M2M100 ``sw``, NLLB-200 ``swh_Latn``, Language Confusion Benchmark ``sw``) and all of
those mappings live here, so no other module spells a language code.

The registry is data: ``languages.yaml`` beside this module holds every language BELEBELE covers
(its 122 FLORES-200 configs) with the codes of the other resources where they exist and the prompt
texts where a native one is known (elsewhere the entry has none and the English text is used;
:attr:`Language.native_prompts` says which). A user's YAML file adds entries or overrides fields of
shipped ones, in the same format::

    languages:
      fr:                       # override: only the fields given change
        prompts:
          answer_in_language: "Réponds en français, s'il te plaît."
      tlh:                      # a new language: name and flores are required
        name: Klingon
        flores: tlh_Latn
        langid: []              # no detector knows it: the translation language check is skipped

Load one with :func:`load_file` (``clo languages --languages FILE``, ``clo data ... --languages
FILE``), or name files in the environment variable ``CLO_LANGUAGES`` (``os.pathsep``-separated),
read when this module is imported. Validation errors name the file and the key
(``my.yaml: tlh.flores: Field required``). :func:`register` adds a :class:`Language` from Python.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from clo.config_base import ConfigError, StrictModel, read_yaml
from clo.registry import UnknownName, unknown_name_message

# The MMMLU instruction follows OpenAI simple-evals' English template; every language keeps the
# "{answer_word}: $LETTER" contract so that the extractor knows what to look for.
_MMMLU_EN = (
    "Answer the following multiple choice question. The last line of your response should be of the "
    "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by "
    "step before answering."
)
_ABCD = ("A", "B", "C", "D")

BUILTIN_FILE = Path(__file__).with_name("languages.yaml")
ENV_VAR = "CLO_LANGUAGES"
# The prompt texts of an entry; each is native or (missing from the entry) English.
PROMPT_KEYS = ("belebele", "mmmlu", "answer_in_language")
_AUTO = "auto"
_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_FLORES = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")
_YAML_BOOLS = {"y", "n", "yes", "no", "on", "off", "true", "false"}


@dataclass(frozen=True)
class BelebeleLabels:
    """Prompt labels of the language-specific BELEBELE template (paper, Table 7)."""

    passage: str
    question: str
    options: tuple[str, str, str, str]
    answer: str


ENGLISH_LABELS = BelebeleLabels("Passage", "Question", _ABCD, "Answer")


@dataclass(frozen=True)
class Language:
    code: str  # the registry code (ISO 639-1 where it exists), the name used everywhere in the API
    name: str  # English name
    native_name: str
    script: str  # ISO 15924
    flores: str  # FLORES-200 code
    mmmlu: str | None  # openai/MMMLU config (None: not in MMMLU; English is MMLU itself)
    m2m100: str | None  # M2M100 language code (None: not covered by M2M100)
    nllb: str | None  # NLLB-200 language code (FLORES-200 style; None: not covered)
    belebele: BelebeleLabels
    mmmlu_instruction: str  # asks for a last line "<answer_word>: $LETTER"
    answer_word: str
    answer_in_language: str  # "please answer in <this language>", written in the language itself
    lcb: str | None = None  # Language Confusion Benchmark code (its <lcb>.csv files); None: not in LCB
    # The facebook/belebele config; "auto": the FLORES code when BELEBELE has it, else None.
    belebele_config: str | None = _AUTO
    # Labels clo.langid may report for text in the language (None: the code's first part);
    # empty: no detector label, the translation language check cannot decide and passes.
    langid: tuple[str, ...] | None = None
    native_prompts: frozenset[str] = frozenset(PROMPT_KEYS)  # which of PROMPT_KEYS are native texts

    def __post_init__(self):
        if self.belebele_config == _AUTO:
            config = self.flores if self.flores in belebele_configs() else None
            object.__setattr__(self, "belebele_config", config)
        if self.langid is None:
            object.__setattr__(self, "langid", (self.code.split("-")[0].lower(),))
        else:
            object.__setattr__(self, "langid", tuple(self.langid))
        object.__setattr__(self, "native_prompts", frozenset(self.native_prompts))

    @property
    def prompt_texts(self) -> str:
        """``native``, ``English`` or ``partial (native: ...)``: where the prompt texts come from."""
        native = [k for k in PROMPT_KEYS if k in self.native_prompts]
        if len(native) == len(PROMPT_KEYS):
            return "native"
        return "English" if not native else f"partial (native: {', '.join(native)})"


_REGISTRY: dict[str, Language] = {}  # keyed by the lower-cased code
_ENTRIES: dict[str, dict] = {}  # the YAML entries the registry was built from (for overrides)


def register(language: Language, *, replace: bool = False) -> Language:
    key = language.code.lower()
    if key in _REGISTRY and not replace:
        raise ValueError(f"language {language.code!r} is already registered (pass replace=True)")
    _REGISTRY[key] = language
    _ENTRIES.pop(key, None)
    return language


def get(code: str) -> Language:
    """The registry entry of a code (any case); an unknown code lists the known ones."""
    key = code.strip().lower() if isinstance(code, str) else code
    try:
        return _REGISTRY[key]
    except (KeyError, TypeError):
        raise UnknownName(
            f"{unknown_name_message('language code', code, known())}. Add one in a YAML file "
            f"(clo languages --help: --languages FILE, or ${ENV_VAR})", str(code)
        ) from None


def known() -> list[str]:
    return sorted(lang.code for lang in _REGISTRY.values())


def all_languages() -> list[Language]:
    return [_REGISTRY[c.lower()] for c in known()]


def by_flores(flores_code: str) -> Language:
    for lang in _REGISTRY.values():
        if lang.flores == flores_code:
            return lang
    raise UnknownName(unknown_name_message("FLORES code", flores_code, sorted(lang.flores for lang in _REGISTRY.values()
                                                                               if lang.flores)), flores_code)


# ---------------------------------------------------------------------------------------------
# What each language has: evaluation data and translators


def task_data(lang: Language) -> dict[str, str | None]:
    """The dataset code each evaluation task reads for ``lang``, None where it has no data.

    ``belebele``: the facebook/belebele config; ``mmmlu``: the openai/MMMLU config (English:
    MMLU itself, ``EN_US``); ``fidelity`` and ``confusion``: the Language Confusion Benchmark code
    (their prompts); ``alpacaeval``: always (its instructions are translated by the data
    translator), shown as ``translated``.
    """
    mmmlu = "EN_US" if lang.code == "en" else lang.mmmlu
    return {"belebele": lang.belebele_config, "mmmlu": mmmlu, "alpacaeval": "translated",
            "fidelity": lang.lcb, "confusion": lang.lcb}


def translators(lang: Language) -> dict[str, str | None]:
    """The language's code for each translator, None where the translator cannot produce it."""
    from clo.data.few_shot import FEW_SHOT
    return {"m2m100": lang.m2m100, "nllb": lang.nllb, "causal": lang.code if lang.code in FEW_SHOT else None,
            "openai": lang.code}


# ---------------------------------------------------------------------------------------------
# The YAML format


def _no_yaml_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(  # noqa: TRY004 - pydantic reports a ValueError with the file and key
            f"got the boolean {v}: YAML reads no, yes, on, off, y, n unquoted as booleans; quote the code")
    return v


class _LabelsEntry(StrictModel):
    passage: str
    question: str
    options: tuple[str, str, str, str] = _ABCD
    answer: str


class _MmmluEntry(StrictModel):
    instruction: str
    answer_word: str

    @model_validator(mode="after")
    def _contract(self) -> _MmmluEntry:
        if f"{self.answer_word}: $LETTER" not in self.instruction or "ABCD" not in self.instruction:
            raise ValueError(f"the instruction must contain '{self.answer_word}: $LETTER' (answer_word, a "
                             "colon, a space, $LETTER) and 'ABCD': the answer extractor looks for that line")
        return self


class _PromptsEntry(StrictModel):
    belebele: _LabelsEntry | None = None
    mmmlu: _MmmluEntry | None = None
    answer_in_language: str | None = None


class _Entry(StrictModel):
    name: str = Field(description="English name")
    native_name: str | None = Field(None, description="the language's name for itself (default: name)")
    script: str | None = Field(None, description="ISO 15924 (default: the FLORES code's script)")
    flores: str = Field(description="FLORES-200 code, e.g. swh_Latn")
    belebele_config: str | None = Field(_AUTO, description="facebook/belebele config; auto: flores if listed")
    m2m100: str | None = None
    nllb: str | None = None
    mmmlu: str | None = None
    lcb: str | None = None
    langid: list[str] | None = Field(None, description="clo.langid labels of the language; [] = undetectable")
    prompts: _PromptsEntry = Field(default_factory=_PromptsEntry)

    @field_validator("m2m100", "nllb", "mmmlu", "lcb", "belebele_config", "name", "native_name",
                     mode="before")
    @classmethod
    def _not_bool(cls, v):
        return _no_yaml_bool(v)

    @field_validator("langid", mode="before")
    @classmethod
    def _labels_not_bool(cls, v):
        return [_no_yaml_bool(x) for x in v] if isinstance(v, list) else v

    @field_validator("flores")
    @classmethod
    def _flores_form(cls, v: str) -> str:
        if not _FLORES.match(v):
            raise ValueError(f"expected a FLORES-200 code like swh_Latn (ISO 639-3 _ ISO 15924), got {v!r}")
        return v


def _language(code: str, entry: _Entry) -> Language:
    p = entry.prompts
    native = frozenset(k for k in PROMPT_KEYS if getattr(p, k) is not None)
    b = p.belebele
    labels = BelebeleLabels(b.passage, b.question, tuple(b.options), b.answer) if b else ENGLISH_LABELS
    instruction, word = (p.mmmlu.instruction, p.mmmlu.answer_word) if p.mmmlu else (_MMMLU_EN, "Answer")
    return Language(
        code=code, name=entry.name, native_name=entry.native_name or entry.name,
        script=entry.script or entry.flores.split("_")[1], flores=entry.flores, mmmlu=entry.mmmlu,
        m2m100=entry.m2m100, nllb=entry.nllb, belebele=labels, mmmlu_instruction=instruction,
        answer_word=word,
        answer_in_language=p.answer_in_language or f"Please answer in {entry.name}.", lcb=entry.lcb,
        belebele_config=entry.belebele_config,
        langid=tuple(entry.langid) if entry.langid is not None else None, native_prompts=native,
    )


def entry_of(lang: Language) -> dict:
    """The YAML entry of a :class:`Language` (its native prompt texts only)."""
    key = lang.code.lower()
    if key in _ENTRIES:
        return json.loads(json.dumps(_ENTRIES[key]))
    prompts: dict = {}
    if "belebele" in lang.native_prompts:
        b = lang.belebele
        prompts["belebele"] = {"passage": b.passage, "question": b.question, "options": list(b.options),
                               "answer": b.answer}
    if "mmmlu" in lang.native_prompts:
        prompts["mmmlu"] = {"instruction": lang.mmmlu_instruction, "answer_word": lang.answer_word}
    if "answer_in_language" in lang.native_prompts:
        prompts["answer_in_language"] = lang.answer_in_language
    return {"name": lang.name, "native_name": lang.native_name, "script": lang.script, "flores": lang.flores,
            "belebele_config": lang.belebele_config, "m2m100": lang.m2m100, "nllb": lang.nllb,
            "mmmlu": lang.mmmlu, "lcb": lang.lcb, "langid": list(lang.langid or ()), "prompts": prompts}


def _merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: fields replace, ``prompts`` merges text by text."""
    out = dict(base)
    for k, v in over.items():
        if k == "prompts" and isinstance(v, dict) and isinstance(base.get("prompts"), dict):
            out["prompts"] = {**base["prompts"], **v}
        else:
            out[k] = v
    return out


def _format_errors(err: ValidationError, source: str, code: str) -> list[str]:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in (code, *e["loc"]))
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{source}: {key}: {msg}")
    return lines


def _read_tree(path: Path) -> dict:
    return read_yaml(path, "languages", "a mapping of language codes (or `languages:`)")


def load_entries(tree: dict, source: str) -> list[Language]:
    """Validate the entries of a parsed languages file against the registry and register them:
    an entry for a known code changes only the fields it gives; a new one needs name and flores.
    Every problem of the file is reported at once, naming file and key; nothing is registered
    then."""
    entries = tree.get("languages", tree) if isinstance(tree.get("languages"), dict) else tree
    entries = {k: v for k, v in entries.items() if k != "belebele_configs"}
    errors: list[str] = []
    built: list[tuple[str, Language, dict]] = []
    for code, raw in entries.items():
        if isinstance(code, bool) or not isinstance(code, str) or not _CODE.match(code):
            hint = (" (YAML reads no, yes, on, off unquoted as booleans: quote it)"
                    if isinstance(code, bool) else "")
            errors.append(f"{source}: {code!r}: not a language code (ISO 639-1 or 639-3, lower case, "
                          f"optionally -Script: fr, ceb, zh-Hant){hint}")
            continue
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            errors.append(f"{source}: {code}: expected a mapping of fields, got {type(raw).__name__}")
            continue
        key = code.lower()
        existing = _REGISTRY.get(key)
        if existing is not None:
            code = existing.code  # an override keeps the registered spelling
        merged = _merge(entry_of(existing), raw) if existing is not None else raw
        try:
            lang = _language(code, _Entry.model_validate(merged))
        except ValidationError as e:
            errors += _format_errors(e, source, code)
            continue
        built.append((key, lang, merged))
    if errors:
        raise ConfigError("\n".join(errors))
    for key, lang, merged in built:
        _REGISTRY[key] = lang
        _ENTRIES[key] = merged
    return [lang for _, lang, _ in built]


def load_file(path: str | Path) -> list[Language]:
    """Add or override registry entries from a user's YAML file; returns the entries it made."""
    path = Path(path).expanduser()
    return load_entries(_read_tree(path), str(path))


_BELEBELE_CONFIGS: frozenset[str] | None = None


def belebele_configs() -> frozenset[str]:
    """The 122 facebook/belebele configs (FLORES-200 codes), from the shipped registry file."""
    global _BELEBELE_CONFIGS
    if _BELEBELE_CONFIGS is None:
        _BELEBELE_CONFIGS = frozenset(_read_tree(BUILTIN_FILE).get("belebele_configs") or ())
    return _BELEBELE_CONFIGS


def _load_builtin() -> None:
    tree = _read_tree(BUILTIN_FILE)
    global _BELEBELE_CONFIGS
    _BELEBELE_CONFIGS = frozenset(tree.get("belebele_configs") or ())
    load_entries(tree, str(BUILTIN_FILE))


def load_env() -> list[Language]:
    """The files named in ``$CLO_LANGUAGES`` (``os.pathsep``-separated), loaded in order."""
    out: list[Language] = []
    for part in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if part.strip():
            try:
                out += load_file(part.strip())
            except ConfigError as e:  # say where the file was named: the user may not remember setting it
                raise ConfigError(f"${ENV_VAR}: {e}") from None
    return out


_load_builtin()
load_env()


# ---------------------------------------------------------------------------------------------
# `clo languages`

HELP = "list the languages: resource codes, prompt texts, evaluation data and translators of each"

_COLUMNS = ("code", "name", "FLORES", "M2M100", "NLLB", "MMMLU", "LCB", "prompts", "tasks", "translators")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        f"{HELP}. The registry is {BUILTIN_FILE.name} in the clo package (every BELEBELE language); add or "
        f"override entries with --languages FILE.yaml (or ${ENV_VAR}=FILE[{os.pathsep}FILE...]), format: "
        "languages: {CODE: {name, native_name, flores, m2m100, nllb, mmmlu, lcb, langid, prompts: {belebele: "
        "{passage, question, options, answer}, mmmlu: {instruction, answer_word}, answer_in_language}}}.")
    parser.add_argument("codes", nargs="*", metavar="CODE", help="show these languages in full")
    parser.add_argument("--languages", action="append", default=[], metavar="FILE",
                        help="a YAML file adding or overriding entries (repeatable)")
    parser.add_argument("--task", help="only languages with data for this task (belebele, mmmlu, ...)")
    parser.add_argument("--translator", help="only languages this translator covers (m2m100, nllb, causal)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _short(v: str | None) -> str:
    return v if v else "-"


def _row(lang: Language) -> dict:
    return {
        "code": lang.code, "name": lang.name, "FLORES": lang.flores, "M2M100": _short(lang.m2m100),
        "NLLB": _short(lang.nllb), "MMMLU": _short(lang.mmmlu), "LCB": _short(lang.lcb),
        "prompts": "native" if lang.prompt_texts == "native" else
                   ("English" if lang.prompt_texts == "English" else "partial"),
        "tasks": " ".join(t for t, v in task_data(lang).items() if v),
        "translators": " ".join(t for t, v in translators(lang).items() if v),
    }


def _as_json(lang: Language) -> dict:
    return {"code": lang.code, "name": lang.name, "native_name": lang.native_name, "script": lang.script,
            "flores": lang.flores, "belebele_config": lang.belebele_config, "m2m100": lang.m2m100,
            "nllb": lang.nllb, "mmmlu": lang.mmmlu, "lcb": lang.lcb, "langid": list(lang.langid or ()),
            "prompt_texts": lang.prompt_texts, "native_prompts": sorted(lang.native_prompts),
            "tasks": task_data(lang), "translators": translators(lang),
            "prompts": {"belebele": list(lang.belebele.__dict__.values()),
                        "mmmlu_instruction": lang.mmmlu_instruction, "answer_word": lang.answer_word,
                        "answer_in_language": lang.answer_in_language}}


def format_table(langs: list[Language]) -> str:
    rows = [_row(lang) for lang in langs]
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in _COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in _COLUMNS).rstrip()]
    lines.append("  ".join("-" * widths[c] for c in _COLUMNS))
    lines += ["  ".join(r[c].ljust(widths[c]) for c in _COLUMNS).rstrip() for r in rows]
    return "\n".join(lines)


def format_detail(lang: Language) -> str:
    d = _as_json(lang)
    b = lang.belebele
    lines = [f"{lang.code}: {lang.name} ({lang.native_name}), script {lang.script}"]
    for k in ("flores", "belebele_config", "m2m100", "nllb", "mmmlu", "lcb"):
        lines.append(f"  {k}: {_short(d[k])}")
    labels = " ".join(d["langid"]) or "- (no detector label: language check skipped)"
    lines.append(f"  langid labels: {labels}")
    lines.append("  tasks: " + ", ".join(f"{t} ({v})" if v else f"{t} (no data)"
                                        for t, v in d["tasks"].items()))
    lines.append("  translators: " + ", ".join(f"{t} ({v})" if v else f"{t} (not covered)"
                                              for t, v in d["translators"].items()))
    src = {k: "native" if k in lang.native_prompts else "English, no native text known"
           for k in PROMPT_KEYS}
    lines.append(f"  prompt texts: {lang.prompt_texts}")
    options = " ".join(b.options)
    lines.append(f"    belebele [{src['belebele']}]: {b.passage} / {b.question} / {options} / {b.answer}")
    lines.append(f"    mmmlu [{src['mmmlu']}]: answer word {lang.answer_word!r}: {lang.mmmlu_instruction}")
    lines.append(f"    answer_in_language [{src['answer_in_language']}]: {lang.answer_in_language}")
    return "\n".join(lines)


def main(args) -> int:
    for f in args.languages:
        load_file(f)
    try:
        langs = [get(c) for c in args.codes] if args.codes else all_languages()
    except KeyError as e:
        print(f"clo languages: {e.args[0]}", file=sys.stderr)
        return 2
    # --task / --translator: only the languages that have it (English has every name of either).
    for what, name, has in (("task", args.task, task_data), ("translator", args.translator, translators)):
        if not name:
            continue
        if name not in has(get("en")):
            print(f"clo languages: {unknown_name_message(what, name, has(get('en')))}", file=sys.stderr)
            return 2
        langs = [lang for lang in langs if has(lang)[name]]
    if args.json:
        print(json.dumps([_as_json(lang) for lang in langs], ensure_ascii=False, indent=1))
    elif args.codes:
        print("\n\n".join(format_detail(lang) for lang in langs))
    else:
        print(format_table(langs))
        native = sum(lang.prompt_texts == "native" for lang in langs)
        print(f"\n{len(langs)} languages; {native} with native prompt texts, the others use the English ones "
              "(clo languages CODE shows them; override in a YAML file, see --help)")
    return 0
