"""The anchor: what a user would otherwise run, Hugging Face TRL on clo's CLO workload.

Modes (``--modes``, comma-separated), all training the attention projections (q, k, v, o) only,
as the paper does:

- ``trl-sft``: ``SFTTrainer`` on the (x_en, y_en) and (x_tgt, y_tgt) rows: 2 sequences per example.
- ``trl-clo``: ``DPOTrainer`` emulating CLO with the rows (x_en, y_en > y_tgt) and
  (x_tgt, y_tgt > y_en), ``loss_type=["sigmoid", "sft"]`` weighted [0.5, 0.5] and the reference
  model in memory: 4 sequences per example.
- ``trl-clo-pre``: the same with ``precompute_ref_log_probs=True`` (its reference pass is timed
  inside the first step, so it lands in the warm-up; ``train_wall_s`` counts it).

The workload is fixed so that figures compare across machines and with the published anchor
(one H200: trl-clo 2.24 examples/s, 45.0 GiB at Llama-3-8B shapes, gradient checkpointing, 4
examples per step; see docs/train.md): random-weight Llama of the chosen shapes, a word-level
tokenizer (one word, one token: exact counts) and examples drawn like OASST first turns (log-normal
prompt and answer lengths, the target-language text 1.3x the English tokens). At ``--scale 1`` the
first 32 examples average 1,558 tokens over their 4 sequences. :func:`make_pairs` is imported by
``bench/train_throughput.py`` so that clo's step sees the very same token sequences.

    python bench/trl_anchor.py --config tiny --steps 6 --warmup 2             # CPU, any machine
    python bench/trl_anchor.py --config llama3-8b --grad-ckpt --steps 6       # GPU

One JSON line describes the run, then one per mode; ``--out FILE`` writes them all as one JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import statistics
import sys
import tempfile
import time

CONFIGS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000),
    "llama3-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
}
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
TARGET_EXPANSION = 1.3  # target-language tokens per English token


def make_tokenizer(vocab: int):
    """Words ``t0 .. t{vocab-4}`` plus <unk>, <pad>, </s>: whitespace-split, one token each."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab - 3)}
    words.update({"<unk>": vocab - 3, "<pad>": vocab - 2, "</s>": vocab - 1})
    tk = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


def make_pairs(n: int, vocab: int, seed: int, scale: float) -> list[dict]:
    """``n`` examples {x_en, y_en, x_l, y_l} of random words.

    Prompt lengths log-normal around 48 words (sigma 0.7, 8 to 400), answers around 220 (sigma
    0.6, 16 to 900), all scaled by ``scale``; the target-language texts are 1.3x as long. The
    draws are part of the workload's definition: changing their order changes every figure.
    """
    rng = random.Random(seed)

    def text(k):
        return " ".join(f"t{rng.randrange(vocab - 3)}" for _ in range(k)) + " "

    pairs = []
    for _ in range(n):
        p = max(8, int(rng.lognormvariate(math.log(48 * scale), 0.7)))
        r = max(16, int(rng.lognormvariate(math.log(220 * scale), 0.6)))
        p, r = min(p, int(400 * scale)), min(r, int(900 * scale))
        pairs.append(dict(x_en=text(p), y_en=text(r), x_l=text(int(p * TARGET_EXPANSION)),
                          y_l=text(int(r * TARGET_EXPANSION))))
    return pairs


def tokens_per_example(pairs: list[dict]) -> float:
    """Mean tokens of an example's 4 CLO sequences: each prompt and each answer appears twice."""
    return statistics.mean(2 * sum(len(p[k].split()) for k in ("x_en", "y_en", "x_l", "y_l")) for p in pairs)


def train_attention_only(model) -> int:
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad = any(k in name for k in ATTENTION)
        n += p.numel() if p.requires_grad else 0
    return n


def _timer():
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of every optimiser step, the device synchronised at both ends."""

        def __init__(self):
            self.times, self.t0 = [], 0.0

        def _sync(self):
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_step_begin(self, args, state, control, **kw):
            self._sync()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self._sync()
            self.times.append(time.perf_counter() - self.t0)

    return StepTimer()


def run_mode(mode: str, a, cfg, tok, pairs) -> dict:
    import torch
    from datasets import Dataset
    from transformers import LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16 if cuda else torch.float32)
    trainable = train_attention_only(model)
    w0 = model.model.layers[0].self_attn.q_proj.weight.detach().float().clone()
    common = dict(output_dir=tempfile.mkdtemp(prefix=f"clo-anchor-{mode}-"), max_steps=a.steps + a.warmup,
                  learning_rate=5e-5, lr_scheduler_type="cosine", logging_steps=1000, save_strategy="no",
                  report_to=[], bf16=cuda, gradient_checkpointing=a.grad_ckpt, use_cpu=not cuda,
                  dataloader_num_workers=0, disable_tqdm=True, seed=0)
    timer = _timer()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t_setup = time.perf_counter()
    ref = None
    if mode == "trl-sft":
        rows = [dict(prompt=p["x_en"], completion=p["y_en"]) for p in pairs] + \
               [dict(prompt=p["x_l"], completion=p["y_l"]) for p in pairs]
        random.Random(1).shuffle(rows)
        args = SFTConfig(per_device_train_batch_size=2 * a.pairs_per_step, max_length=4096, **common)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             callbacks=[timer])
    elif mode in ("trl-clo", "trl-clo-pre"):
        rows = []
        for p in pairs:
            rows.append(dict(prompt=p["x_en"], chosen=p["y_en"], rejected=p["y_l"]))
            rows.append(dict(prompt=p["x_l"], chosen=p["y_l"], rejected=p["y_en"]))
        ref = copy.deepcopy(model).eval().requires_grad_(False)
        args = DPOConfig(per_device_train_batch_size=2 * a.pairs_per_step, max_length=4096, beta=0.1,
                         loss_type=["sigmoid", "sft"], loss_weights=[0.5, 0.5],
                         precompute_ref_log_probs=mode == "trl-clo-pre",
                         precompute_ref_batch_size=2 * a.pairs_per_step, **common)
        trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tok, callbacks=[timer])
    else:
        raise SystemExit(f"trl_anchor: unknown mode {mode!r} (trl-sft, trl-clo, trl-clo-pre)")
    t_setup = time.perf_counter() - t_setup
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    steady = timer.times[a.warmup:] or timer.times
    med = statistics.median(steady)
    moved = float((model.model.layers[0].self_attn.q_proj.weight.detach().float() - w0).abs().max())
    result = dict(mode=mode, trainable_params=trainable, first_layer_q_moved=moved > 0,
                  setup_s=round(t_setup, 2), train_wall_s=round(wall, 2), step_s_median=round(med, 4),
                  step_s_min=round(min(steady), 4), pairs_per_s=round(a.pairs_per_step / med, 3),
                  peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None)
    del trainer, model, ref
    if cuda:
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny", choices=list(CONFIGS))
    ap.add_argument("--modes", default="trl-sft,trl-clo,trl-clo-pre")
    ap.add_argument("--pairs-per-step", type=int, default=4, help="examples per optimiser step")
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0, help="length scale (1.0: the published workload)")
    ap.add_argument("--grad-ckpt", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import torch
    import trl
    from transformers import LlamaConfig

    cuda = torch.cuda.is_available()
    cfg = LlamaConfig(**CONFIGS[a.config], max_position_embeddings=4096)
    tok = make_tokenizer(cfg.vocab_size)
    cfg.pad_token_id, cfg.eos_token_id = tok.pad_token_id, tok.eos_token_id
    pairs = make_pairs(a.pairs_per_step * (a.steps + a.warmup), cfg.vocab_size, 0, a.scale)
    info = dict(torch=torch.__version__, trl=trl.__version__, device=torch.cuda.get_device_name() if cuda else "cpu",
                config=a.config, scale=a.scale, pairs_per_step=a.pairs_per_step, steps=a.steps,
                grad_ckpt=a.grad_ckpt, mean_tokens_per_pair_4seq=round(tokens_per_example(pairs), 1))
    print(json.dumps(info), flush=True)
    results = []
    for mode in a.modes.split(","):
        results.append(run_mode(mode, a, cfg, tok, pairs))
        print(json.dumps(results[-1]), flush=True)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(dict(info=info, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
