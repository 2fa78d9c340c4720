"""BELEBELE through lm-evaluation-harness, in-process and offline: the reference we check against.

The harness's own task machinery renders the prompts (its ``belebele`` template, read from the
installed package, for ``template="harness"``; the text our ``native`` template renders,
passed through unchanged, otherwise) over a local JSONL copy of the rows, and its ``HFLM``
wraps the already-loaded model. Nothing touches the hub. Needs ``pip install lm-eval`` (the
``dev`` extra).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from clo.eval.belebele import render
from clo.languages import Language


def _harness_template_config() -> dict:
    import lm_eval
    import yaml

    path = Path(lm_eval.__file__).parent / "tasks" / "belebele" / "_default_template_yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def harness_predict(model, tokenizer, rows: list[dict], lang: Language, *, template: str = "harness",
                    batch_size: int = 8, timings: dict | None = None) -> tuple[list[int], list[list[float]], float]:
    """(predictions, log-likelihoods per option, seconds in ``HFLM.loglikelihood``); ``timings``, if
    given, receives that call's wall and process-CPU seconds (``wall``, ``cpu``)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.models.huggingface import HFLM

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "test.jsonl"
        with data.open("w", encoding="utf-8") as f:
            for i, row in enumerate(rows):
                ctx, conts = render(row, lang, template)
                f.write(json.dumps({**row, "doc_idx": i, "clo_context": ctx}, ensure_ascii=False) + "\n")
        if template == "harness":
            base = _harness_template_config()
            doc_to_text, doc_to_choice = base["doc_to_text"], base["doc_to_choice"]
        else:
            _, conts = render(rows[0], lang, template)
            doc_to_text, doc_to_choice = "{{clo_context}}", [c.lstrip() for c in conts]
        config = {
            "task": f"clo_belebele_{lang.code}_{template}",
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": doc_to_text,
            "doc_to_choice": doc_to_choice,
            "doc_to_target": "{{['1', '2', '3', '4'].index(correct_answer_num|string)}}",
            "target_delimiter": " ",
            "metric_list": [{"metric": "acc"}],
        }
        task = ConfigurableTask(config=config)
        task.build_all_requests(rank=0, world_size=1)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
        reqs = list(task.instances)
        t0, c0 = time.perf_counter(), time.process_time()
        resps = lm.loglikelihood(reqs, disable_tqdm=True)
        seconds = time.perf_counter() - t0
        if timings is not None:
            timings.update(wall=seconds, cpu=time.process_time() - c0)
    docs = list(task.test_docs())
    ll = [[0.0] * 4 for _ in docs]
    for req, (logp, _greedy) in zip(reqs, resps):
        ll[req.doc_id][req.idx] = float(logp)
    order = [int(d["doc_idx"]) for d in docs]
    by_row = [None] * len(rows)
    for doc_id, row_idx in enumerate(order):
        by_row[row_idx] = ll[doc_id]
    preds = [max(range(4), key=lambda k: (s[k], -k)) for s in by_row]
    return preds, by_row, seconds
