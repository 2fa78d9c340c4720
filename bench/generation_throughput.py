"""Generation throughput and agreement: the transformers backend against the vLLM backend.

Both backends answer the same prompts (AlpacaEval instructions, formatted by clo) with the same
model, greedy, the same ``max_new_tokens``; the figures are prompts/s and generated tokens/s
(tokens counted with the model's tokenizer on the decoded answers), the ratio, and how many
answers are identical. The vLLM engine start is timed apart from generation. Needs vLLM
(``make venv-vllm`` on a CPU, ``pip install 'clo[vllm]'`` on a GPU):

    .venv-vllm/bin/python bench/generation_throughput.py --n 32 --max-new-tokens 64

Results go to ``bench/results/generation_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--n", type=int, default=32, help="prompts (the first n AlpacaEval instructions)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8, help="transformers backend batch size")
    p.add_argument("--dtype", default="auto", help="both backends: auto, float32, bfloat16")
    p.add_argument("--output", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)

    from clo.eval.alpacaeval import load_instructions
    from clo.eval.generation import VLLMGenerator, collect, generate
    from clo.models import load_model, resolve

    prompts = [r["instruction"] for r in load_instructions(None, Path(args.data_dir))[: args.n]]
    model, tok = load_model(args.model, dtype=args.dtype)
    kw = {"max_new_tokens": args.max_new_tokens, "temperature": 0.0, "top_p": 1.0, "seed": 0}

    def n_tokens(texts: list[str]) -> int:
        return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)

    generate(model, tok, prompts[:2], **kw, batch_size=2)  # untimed: lazy initialisation
    t0 = time.perf_counter()
    hf = generate(model, tok, prompts, **kw, batch_size=args.batch_size)
    hf_s = time.perf_counter() - t0
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    del model

    t0 = time.perf_counter()
    gen = VLLMGenerator(resolve(args.model), tok, dtype=dtype, max_model_len=2048)
    start_s = time.perf_counter() - t0
    collect(gen, prompts[:2], **kw)  # untimed, as above
    t0 = time.perf_counter()
    vl = collect(gen, prompts, **kw)
    vl_s = time.perf_counter() - t0
    gen.close()

    import vllm

    same = sum(a == b for a, b in zip(hf, vl))
    first_diff = next((i for i, (a, b) in enumerate(zip(hf, vl)) if a != b), None)
    res = {
        "model": args.model, "dtype": dtype, "n": len(prompts), "max_new_tokens": args.max_new_tokens,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "cpu_count": __import__("os").cpu_count(), "vllm": vllm.__version__, "torch": torch.__version__,
        "transformers": {"seconds": round(hf_s, 2), "prompts_per_s": round(len(prompts) / hf_s, 3),
                         "tokens_per_s": round(n_tokens(hf) / hf_s, 1), "batch_size": args.batch_size},
        "vllm_backend": {"seconds": round(vl_s, 2), "prompts_per_s": round(len(prompts) / vl_s, 3),
                         "tokens_per_s": round(n_tokens(vl) / vl_s, 1), "engine_start_s": round(start_s, 1)},
        "ratio": round(hf_s / vl_s, 2), "identical": same,
        "first_difference": None if first_diff is None else {
            "prompt": prompts[first_diff], "transformers": hf[first_diff], "vllm": vl[first_diff]},
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "generation_throughput.json").write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    t, v = res["transformers"], res["vllm_backend"]
    md = [f"# Generation: transformers vs vLLM ({args.model}, {dtype}, {res['device']}, {res['cpu_count']} cores)",
          "", (f"{len(prompts)} AlpacaEval prompts, greedy, max_new_tokens {args.max_new_tokens}; "
               f"vLLM {res['vllm']}, torch {res['torch']}."), "",
          "| backend | prompts/s | tokens/s | seconds | engine start (s) |", "|---|---|---|---|---|",
          f"| transformers (batch {args.batch_size}) | {t['prompts_per_s']} | {t['tokens_per_s']} | {t['seconds']} | - |",
          f"| vllm | {v['prompts_per_s']} | {v['tokens_per_s']} | {v['seconds']} | {v['engine_start_s']} |",
          "", f"vLLM / transformers speed: {res['ratio']}x; identical answers: {same}/{len(prompts)}."]
    (out / "generation_throughput.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
