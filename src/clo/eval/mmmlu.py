"""MMMLU: generative multiple choice with a localised "<answer word>: $LETTER" instruction.

The prompt is the language's ``mmmlu_instruction`` (clo.languages) followed by the question and
options in OpenAI simple-evals' layout. The answer is extracted from the generated text
(:func:`extract_answer`); when nothing can be extracted the model is asked again with a fresh
sampling seed, up to ``retries`` times, after which the item counts as wrong and as an extraction
failure.

The prompt asks the model to think step by step, so the generation budget must leave room for the
reasoning (``eval.mmmlu_max_new_tokens``, else ``eval.max_new_tokens``); a response ends once it
has written the answer line in the form asked for (:func:`stop_strings`), so the budget is spent
only by responses that never write one.
"""

from __future__ import annotations

import csv
import random
import re
import unicodedata
from collections import defaultdict
from pathlib import Path

from tqdm.auto import tqdm

from clo import languages
from clo.eval.core import EvalDataError, TaskContext, TaskResult, data_hash
from clo.eval.stats import mean_stderr
from clo.eval.task import Option, Task, count_csv_rows, register
from clo.languages import Language

COLUMNS = ("Question", "A", "B", "C", "D", "Answer", "Subject")
LETTERS = "ABCD"

# MMLU's 57 subjects in the four categories of Hendrycks et al. (2021).
_CATEGORIES = {
    "STEM": "abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science "
            "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
            "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
            "high_school_mathematics high_school_physics high_school_statistics machine_learning",
    "humanities": "formal_logic high_school_european_history high_school_us_history high_school_world_history "
                  "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy "
                  "prehistory professional_law world_religions",
    "social sciences": "econometrics high_school_geography high_school_government_and_politics "
                       "high_school_macroeconomics high_school_microeconomics high_school_psychology "
                       "human_sexuality professional_psychology public_relations security_studies sociology "
                       "us_foreign_policy",
    "other": "business_ethics clinical_knowledge college_medicine global_facts human_aging management marketing "
             "medical_genetics miscellaneous nutrition professional_accounting professional_medicine virology",
}
SUBJECT_CATEGORY = {s: cat for cat, subjects in _CATEGORIES.items() for s in subjects.split()}


def render_prompt(row: dict, lang: Language) -> str:
    """The user message: instruction, question, options (simple-evals' multiple-choice layout)."""
    return (f"{lang.mmmlu_instruction}\n\n{row['Question'].strip()}\n\n"
            f"A) {row['A']}\nB) {row['B']}\nC) {row['C']}\nD) {row['D']}")


def stop_strings(lang: Language) -> list[str]:
    """The answer line in the form the prompt asks for, ``"<answer word>: X"`` and its newline, in
    the language's answer word and in English (models often answer with "Answer:"), with an ASCII
    or full-width colon, with or without a space: generation stops once the text holds one. A
    response that writes its answer otherwise ("**Answer: B**", "Answer: B.") runs on to its end
    of sequence or the budget, and is read the same way."""
    words = dict.fromkeys([lang.answer_word, "Answer"])
    return [f"{w}{sep}{letter}\n" for w in words for sep in (": ", ":", "：") for letter in LETTERS]


# ---------------------------------------------------------------------------------------------
# Answer extraction
#
# Reading rule. The prompt asks for a last line "<answer word>: X". A mention written in that
# form (the answer word, then a colon) is an *answer line*; the last answer line is the answer,
# whatever the text says after it ("Antwort: C" then "Antwort A ist falsch" is C). Without an
# answer line, the last looser mention counts: the answer word, a copula ("The answer is C",
# "Jibu ni B", "정답은 B번입니다") and the letter, or the answer word and a letter that ends the
# sentence ("Final answer B."). An answer word followed by a letter and more words ("Antwort A ist
# falsch", "Answer A is wrong") names an option, not the answer.

# Answer words of every registered language plus common variants models write instead.
_EXTRA_ANSWER_WORDS = ["Answer", "Final Answer", "The answer is", "Correct answer", "正确答案", "答", "정답", "답",
                       "Antwort", "Die Antwort ist", "Richtige Antwort", "Jawaban", "Jawabannya", "Jibu",
                       "Ìdáhùn", "Idáhùn", "Idahun"]
_KOREAN_LETTERS = {"가": "A", "나": "B", "다": "C", "라": "D"}
# Copulas between the answer word and the letter ("is", "ist", "est", "adalah", "ni", "là", "هي",
# "হল", "是", Korean topic particles, Japanese は/が), and dashes/equals signs.
_COPULAS = ["is", "ist", "est", "es", "è", "é", "adalah", "ialah", "ni", "là", "هي", "হল", "是", "为", "為",
            "은", "는", "は", "が", "—", "–", "-", "="]
# Korean particles, counters and copula endings a letter may carry ("B번입니다", "B가", "B를").
_KO_SUFFIX = "번|입니다|이다|이에요|예요|에요|요|가|이|를|을|는|은|로|으로|와|과|항"
# Characters that are invisible and carry nothing here (zero-width space, word joiner, BOM,
# soft hyphen); ZWJ/ZWNJ are kept, since they shape Indic and Persian text.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u2060\ufeff\u00ad\u180e"))


def _answer_words() -> list[str]:
    words = {languages.get(c).answer_word for c in languages.known()} | set(_EXTRA_ANSWER_WORDS)
    # Longest first, so that "Final Answer" wins over "Answer" at the same position.
    return sorted((unicodedata.normalize("NFKC", w) for w in words), key=len, reverse=True)


def _pattern() -> re.Pattern:
    words = "|".join(re.escape(w) for w in _answer_words())
    copulas = "|".join(re.escape(c) for c in sorted(_COPULAS, key=len, reverse=True))
    mark = r"(?:\*\*|\*|__)?"
    # A letter that names several options ("b, c or d", "A/B") is no answer.
    not_a_list = r"(?![ \t]*[,/][ \t]*[A-Da-d](?![A-Za-z]))"
    return re.compile(
        rf"(?i:{words})[ \t]*{mark}[ \t]*"
        # the connector: a colon (an answer line), or a copula and maybe a colon, or nothing; a
        # Latin copula must end its word ("is", not "island"), "答えはB" needs no space
        rf"(?:(?P<colon>[:：])|(?i:(?P<copula>{copulas}))(?!(?<=[A-Za-z\u00C0-\u024F])[A-Za-z])[ \t]*(?P<colon2>[:：])?)?"
        rf"[ \t]*{mark}[ \t]*"
        # wrappers: markdown bold, LaTeX \boxed{..} / \text{..} / $..$, brackets, quotes
        r"(?:\$?[ \t]*\\boxed[ \t]*\{[ \t]*)?(?:\\text(?:bf)?[ \t]*\{[ \t]*)?[\(\[\{\"'「“]?[ \t]*"
        # A capital letter must stand alone, not start a word ("Because", "다음"); it may carry a
        # Korean particle or counter ("B번입니다", "B가"); Korean "다입니다" is the letter plus the copula.
        rf"(?:(?P<upper>[A-D])(?![A-Za-z\u00C0-\u024F])(?!(?!{_KO_SUFFIX})[\uAC00-\uD7A3]){not_a_list}"
        r"|(?P<hangul>[가나다라])(?!(?!입니다)[A-Za-z\u00C0-\u024F\uAC00-\uD7A3])"
        # A lower-case letter ("answer : a", "Jawaban : b") is often a word: it counts as an option
        # label ("a)"), when it ends the answer (closing wrappers, then a full stop or the end of
        # the line), when a comma, dash or colon follows ("Answer: a, since ..."), or a Korean
        # particle. "The answer is a matter of taste" names no option.
        rf"|(?P<lower>[a-d]){not_a_list}(?=[ \t]*[\)\]\}}]|[ \t\"'」”$*_]*(?:[.!?。,，、;:\-–—]|\n|$)"
        rf"|(?:{_KO_SUFFIX})))",
    )


_ANSWER_RE: re.Pattern | None = None
_BOXED_RE = re.compile(r"\\boxed\s*\{\s*(?:\\text(?:bf)?\s*\{\s*)?([A-D])\s*\}")
# A line that starts with an option label, as in the prompt's "B) text".
_OPTION_LINE_RE = re.compile(r"^\s*(?:\*\*)?\(?([A-D])\)", re.MULTILINE)
# What may follow a letter given without connector for it to be the answer: closing wrappers,
# then the end of the sentence or line.
_ENDS_ANSWER_RE = re.compile(r"[ \t\"'」”$*_\)\]\}]*(?:[.!?。]|\n|$)")


def normalize_response(text: str) -> str:
    """NFKC folds full-width letters and colons (Ａ→A, ：→:) into their ASCII forms; invisible
    characters (zero-width space, word joiner, BOM, soft hyphen) are dropped."""
    return unicodedata.normalize("NFKC", text).translate(_INVISIBLE)


def _letter(m: re.Match) -> str:
    if m.group("hangul"):
        return _KOREAN_LETTERS[m.group("hangul")]
    return (m.group("upper") or m.group("lower")).upper()


def extract_answer(text: str) -> str | None:
    """The option letter (A-D) a response gives as its answer, None when it gives none.

    The last answer line (``<answer word>: X``, the form the prompt asks for) wins over anything
    written after it; without one, the last ``<answer word> <copula> X`` ("The answer is C",
    "정답은 B번입니다") or answer word directly followed by a letter that ends the sentence; else
    the last ``\\boxed{X}``; else an opening option line (``X) ...``) when no other option is named
    that way.

    Handles the answer words of every registered language, full-width letters and colons,
    zero-width characters, Korean option letters 가/나/다/라 and particles after a letter
    ("B가", "B번"), markdown bold and LaTeX ``\\boxed``/``\\text`` wrappers. A lower-case letter
    counts when it ends the answer, is an option label or is followed by a comma, dash or colon
    (``answer : a``, ``Jawaban: (b).``, ``Answer: a, since ...``), not when a sentence goes on
    ("the answer is a matter of taste") or when several letters are listed ("b, c or d").
    """
    global _ANSWER_RE
    if _ANSWER_RE is None:
        _ANSWER_RE = _pattern()
    t = normalize_response(text)
    lines, loose = [], []
    for m in _ANSWER_RE.finditer(t):
        if m.group("colon") or m.group("colon2"):
            lines.append(m)
        elif m.group("copula") or _ENDS_ANSWER_RE.match(t, m.end()):
            loose.append(m)
    if lines or loose:
        return _letter((lines or loose)[-1])
    boxed = list(_BOXED_RE.finditer(t))
    if boxed:
        return boxed[-1].group(1)
    # Small models often reply with just the chosen option line ("B) Rhinovirus"): accept it when
    # the response opens with it and names no other option that way.
    labels = {m.group(1) for m in _OPTION_LINE_RE.finditer(t)}
    opening = _OPTION_LINE_RE.match(t.lstrip("\n"))
    if opening and labels == {opening.group(1)}:
        return opening.group(1)
    return None


# ---------------------------------------------------------------------------------------------
# Data


def data_file(lang: Language) -> str:
    """The MMMLU file of ``lang`` under the data directory: openai/MMMLU's file names
    (``mmlu_DE-DE.csv``; English is ``mmlu_EN-US.csv``, the original MMLU)."""
    code = "EN-US" if lang.mmmlu is None else lang.mmmlu.replace("_", "-")
    return f"mmlu/mmlu_{code}.csv"


def _answer(row: dict, where: str) -> str:
    """The row's answer letter, after the checks every source of rows must pass."""
    ans = str(row["Answer"] or "").strip()
    # A tuple, not the string: "" and "AB" are substrings of "ABCD".
    if ans not in tuple(LETTERS):
        raise EvalDataError(f"{where}: field 'Answer' must be one of A-D, got {ans!r}")
    if not str(row["Question"] or "").strip():
        raise EvalDataError(f"{where}: field 'Question' is empty")
    return ans


def _require_columns(present, needed, where: str) -> None:
    missing = [c for c in needed if c not in (present or [])]
    if missing:
        raise EvalDataError(f"{where}: missing column(s) {', '.join(missing)}")


def load_rows(lang: Language, data_dir: Path | None) -> list[dict]:
    """Rows of ``<data_dir>/mmlu/mmlu_<XX-YY>.csv`` (MMMLU's file names), or of the hub."""
    if data_dir is not None:
        path = Path(data_dir) / data_file(lang)
        if not path.is_file():
            raise EvalDataError(f"{path}: no MMMLU file for {lang.name} (expected {data_file(lang)} "
                                "in openai/MMMLU's columns under the data directory)")
        rows = []
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            _require_columns(reader.fieldnames, COLUMNS, f"{path}:1")
            for lineno, row in enumerate(reader, 2):
                ans = _answer(row, f"{path}:{lineno}")
                rows.append({c: row[c] for c in COLUMNS} | {"Answer": ans, "id": str(len(rows))})
        return rows
    from datasets import load_dataset

    if lang.mmmlu is None:
        where = "cais/mmlu[all]"
        ds = load_dataset("cais/mmlu", "all", split="test")
        _require_columns(ds.column_names, ("question", "subject", "choices", "answer"), where)
        rows = []
        for i, r in enumerate(ds):
            choices, k = r["choices"], r["answer"]
            if not isinstance(choices, list) or len(choices) != 4:
                raise EvalDataError(f"{where} row {i}: field 'choices' must hold 4 options, got {choices!r}")
            # cais/mmlu's answer is the index of the right choice; -1 would silently mean D.
            if type(k) is not int or not 0 <= k < 4:
                raise EvalDataError(f"{where} row {i}: field 'answer' must be 0..3, got {k!r}")
            row = {"Question": r["question"], **{LETTERS[j]: choices[j] for j in range(4)},
                   "Answer": LETTERS[k], "Subject": r["subject"]}
            _answer(row, f"{where} row {i}")
            rows.append(row | {"id": str(i)})
        return rows
    where = f"openai/MMMLU[{lang.mmmlu}]"
    # The hub stores CSV; without keep_default_na pandas turns cells such as "NA" or "None" (real
    # options) into nulls, which the local CSV reader keeps as text.
    ds = load_dataset("openai/MMMLU", lang.mmmlu, split="test", keep_default_na=False)
    _require_columns(ds.column_names, COLUMNS, where)
    return [{c: str(r[c]) for c in COLUMNS} | {"Answer": _answer(r, f"{where} row {i}"), "id": str(i)}
            for i, r in enumerate(ds)]


def format_item_ids(n_rows: int, k: int, seed: int) -> list[str]:
    """The row ids (positions, as :func:`load_rows` numbers them) of the ``k`` MMMLU format items
    (the paper's Appendix D, ``data.mmmlu_format_items``) among ``n_rows`` questions: a seeded
    sample, the same for every language of the same size (:mod:`clo.data.format_items` adds them
    to training)."""
    if k <= 0:
        return []
    if k > n_rows:
        from clo.config_base import ConfigError

        raise ConfigError(f"data.mmmlu_format_items: {k} items asked for, MMMLU has {n_rows} questions")
    return [str(i) for i in sorted(random.Random(f"mmmlu-format:{seed}").sample(range(n_rows), k))]


def format_items_left_out(cfg, n_rows: int) -> set[str]:
    """The row ids an evaluation under ``cfg`` leaves out: those trained on as format items."""
    data = getattr(cfg, "data", None)
    k = getattr(data, "mmmlu_format_items", 0) if data is not None else 0
    return set(format_item_ids(n_rows, k, data.seed)) if k else set()


def stratified_sample(rows: list[dict], limit: int | None, seed: int = 0) -> list[dict]:
    """``limit`` rows spread over subjects in proportion to their size (largest remainders),
    each subject's rows chosen at random with ``seed``; the result keeps file order."""
    if limit is None or limit >= len(rows):
        return rows
    by_subject: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_subject[r["Subject"]].append(i)
    subjects = sorted(by_subject)
    quotas = {s: limit * len(by_subject[s]) / len(rows) for s in subjects}
    take = {s: int(quotas[s]) for s in subjects}
    left = limit - sum(take.values())
    for s in sorted(subjects, key=lambda s: (-(quotas[s] - take[s]), s))[:left]:
        take[s] += 1
    rng = random.Random(seed)
    chosen = []
    for s in subjects:
        idx = list(by_subject[s])
        rng.shuffle(idx)
        chosen += idx[:take[s]]
    return [rows[i] for i in sorted(chosen)]


# ---------------------------------------------------------------------------------------------
# Task


def _group(records: list[dict], key) -> dict:
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        groups[key(r)].append(float(r["correct"]))
    out = {}
    for g in sorted(groups):
        acc, se = mean_stderr(groups[g])
        out[g] = {"accuracy": acc, "stderr": se, "n": len(groups[g])}
    return out


def _metrics(records: list[dict]) -> dict:
    if not records:
        # null, not NaN (which is not JSON), and why
        return {"accuracy": None, "stderr": None, "failure_rate": None, "n": 0, "per_subject": {},
                "per_category": {}, "reason": "no questions"}
    acc, se = mean_stderr([float(x["correct"]) for x in records])
    return {
        "accuracy": acc, "stderr": se, "failure_rate": sum(x["failed"] for x in records) / len(records),
        "n": len(records),
        "per_subject": _group(records, lambda x: x["subject"]),
        "per_category": _group(records, lambda x: x["category"]),
    }


def run(ctx: TaskContext, *, limit: int | None = None, max_new_tokens: int | None = None,
        retries: int | None = None, batch_size: int | None = None, temperature: float | None = None) -> TaskResult:
    ev = ctx.cfg.eval
    limit = limit if limit is not None else ev.limit
    all_rows = load_rows(ctx.lang, ctx.data_dir)
    # Appendix D: the questions trained on as format items (data.mmmlu_format_items) are left out.
    skip = format_items_left_out(ctx.cfg, len(all_rows))
    rows = stratified_sample([r for r in all_rows if r["id"] not in skip], limit, ev.seed)
    prompts = [render_prompt(r, ctx.lang) for r in rows]
    max_new_tokens = max_new_tokens or ev.mmmlu_max_new_tokens or ev.max_new_tokens
    temperature = ev.temperature if temperature is None else temperature
    bs = batch_size or ev.batch_size
    retries = ev.mmmlu_retries if retries is None else retries
    stop = stop_strings(ctx.lang)

    # attempts[i]: every response so far to item i; an item is done once one parses or it has
    # had 1 + retries attempts.
    attempts: dict[int, list[str]] = {i: list(ctx.cache.get(r["id"], {}).get("responses", []))
                                      for i, r in enumerate(rows)}

    def done(i: int) -> bool:
        a = attempts[i]
        return bool(a) and (extract_answer(a[-1]) is not None or len(a) > retries)

    bar = tqdm(total=len(rows), initial=sum(done(i) for i in attempts), desc=f"mmmlu {ctx.lang.code}", unit="q")
    for attempt in range(retries + 1):
        todo = [i for i in range(len(rows)) if not done(i) and len(attempts[i]) == attempt]
        if not todo:
            continue
        # Retries use a different seed: with the same seed a failed sample would repeat.
        for idx, texts in ctx.generator.iter_generate([prompts[i] for i in todo],
                                                      max_new_tokens=max_new_tokens, temperature=temperature,
                                                      top_p=ev.top_p, seed=ev.seed + 1000 * attempt,
                                                      batch_size=bs, stop=stop):
            for j, text in zip(idx, texts):
                i = todo[j]
                attempts[i].append(text)
                ctx.cache.put(rows[i]["id"], {"responses": attempts[i]})
                if done(i):
                    bar.update(1)
    bar.close()

    records = []
    for i, r in enumerate(rows):
        pred = extract_answer(attempts[i][-1])
        records.append({
            "id": r["id"], "subject": r["Subject"], "category": SUBJECT_CATEGORY.get(r["Subject"], "other"),
            "gold": r["Answer"], "pred": pred, "correct": pred == r["Answer"], "failed": pred is None,
            "attempts": len(attempts[i]), "responses": attempts[i],
        })
    metrics = _metrics(records)
    if skip:
        metrics["format_items_left_out"] = len(skip)
    md = ["| category | accuracy | ± SE | n |", "|---|---|---|---|"]
    md += [f"| {c} | {v['accuracy']:.4f} | {v['stderr']:.4f} | {v['n']} |" for c, v in metrics["per_category"].items()]
    md += ["", "| subject | accuracy | n |", "|---|---|---|"]
    md += [f"| {s} | {v['accuracy']:.4f} | {v['n']} |" for s, v in metrics["per_subject"].items()]
    if skip:
        md = [f"{len(skip)} questions trained on as format items (data.mmmlu_format_items, the paper's Appendix D) "
              "are left out.", ""] + md
    return TaskResult(metrics, records, data_hash([{c: r[c] for c in COLUMNS} for r in rows]), "\n".join(md))


def missing_data(lang: Language, data_dir: Path | None, opts: dict) -> str | None:
    """What an MMMLU run in ``lang`` lacks (None: nothing), read before a grid starts."""
    if lang.mmmlu is None and lang.code != "en":
        return f"MMMLU has no {lang.name} ({lang.code}): openai/MMMLU ships 14 languages and English as MMLU"
    if data_dir is None:
        return None  # openai/MMMLU or cais/mmlu on the hub (not checked offline)
    path = Path(data_dir) / data_file(lang)
    return None if path.is_file() else f"{path}: no MMMLU file for {lang.name} ({data_file(lang)})"


def count_items(lang: Language, data_dir: Path | None, opts: dict, assumed) -> int | None:
    """Questions of ``lang``: the local file's rows, else MMLU's 14,042 test questions (``assumed``)."""
    n = count_csv_rows([Path(data_dir) / data_file(lang)]) if data_dir is not None else None
    return n or int(assumed.get("mmmlu", 0)) or None


TASK = register(Task(
    "mmmlu", "MMMLU (MMLU in the target language), generative", run,
    data_files=lambda lang, opts: [data_file(lang)], hub="openai/MMMLU", missing_data=missing_data,
    count_items=count_items,
    options=(Option("max_new_tokens", "generation length (default: eval.mmmlu_max_new_tokens, else "
                    "eval.max_new_tokens)", int, metavar="N"),),
    # eval.mmmlu_retries is in every task's fingerprint, as in the item caches already written.
    settings=("mmmlu_max_new_tokens",),
))
