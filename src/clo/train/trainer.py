"""The training loop: CLO and the baselines, on accelerate (one or many processes).

Layout of ``output_dir`` (one stage; ``sft+dpo`` has ``sft/`` and ``dpo/`` stage directories):

- ``last/state.pt``: the resumable state (trainable tensors, optimiser, scheduler, RNG, step,
  best validation loss); written every ``save_every`` (= ``eval_every``) steps, atomically, and
  removed when the run finishes unless ``train.keep_state``.
- ``best/``: the model with the lowest validation loss (without validation data: the final one),
  a full transformers checkpoint with its tokenizer (LoRA merged; the adapter itself in
  ``best/adapter/``), loadable by ``clo.models.load_model(str(path))``. The best trainable
  tensors are kept in memory (and in ``last/``) while training; ``best/`` is written once, at the end.
- ``run.json``: the fingerprint of everything that makes the run (model identity, language, the
  train config, the data files' digests); a directory belongs to that configuration only.
- ``log.jsonl`` (+ ``tensorboard/`` when installed), ``rejected.jsonl``, ``result.json`` (the
  run is finished when it exists: calling :func:`train` again returns it at once).

Batches: the global batch of ``batch_size`` units is dealt over processes, and each process's
share cut into micro-batches (:mod:`clo.train.distributed`). Every micro-batch contributes its
exact share of the global loss (example means weighted by ``b/B``, token means normalised by the
global token count), so the gradient does not depend on the number of processes or micro-batches.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from clo.errors import CloError
from clo.fingerprints import differing_keys, fingerprint, sha256_file
from clo.io import atomic_dir, atomic_path, write_json
from clo.train import distributed as dist
from clo.train import methods as method_registry
from clo.train.data import EncodedDataset, load_dataset
from clo.train.logprobs import (
    PackedLogProbs,
    base_model,
    check_packing,
    chunk_tokenwise,
    pack_sequences,
    packing_layout,
    score,
)
from clo.train.memory import adamw
from clo.train.precision import compute_context, memory_plan, upcast_trainable
from clo.train.reference import cached_reference, model_identity
from clo.train.tracking import Trackers

log = logging.getLogger(__name__)

# Keys that change how a run is computed, not what it computes: a run may resume with others
# (e.g. a smaller micro-batch after running out of memory).
OPERATIONAL_KEYS = ("micro_batch_size", "max_tokens_per_micro_batch", "gradient_checkpointing", "logit_chunk",
                    "tokenwise_chunk",
                    "pack_length", "attn_implementation", "reference_cache", "log_every", "sharding",
                    "drift_prompts", "drift_max_new_tokens", "report_to", "keep_state", "save", "process_group_timeout_s")
GPU_TOKENS_PER_MICRO_BATCH = 16384


class TrainingDiverged(RuntimeError):
    pass


class RunMismatch(CloError, ValueError):
    """The output directory holds a run of another configuration."""


class StateFileError(RunMismatch):
    """A ``run.json`` or ``last/state.pt`` that is not what clo writes (torn, edited or foreign)."""


# What ``last/state.pt`` holds (see ``_Stage.save_state``); a state without one of them is refused.
STATE_KEYS = ("step", "best", "trainable", "optimizer", "scheduler", "rng", "plan_len")
# Under FSDP2 the tensors are in ``last/shards-*/`` (torch.distributed.checkpoint) and ``state.pt``
# holds the rest (``_Stage._save_sharded_state``).
SHARDED_STATE_KEYS = ("step", "best", "shards", "param_groups", "has_best", "scheduler", "rng", "plan_len")


@dataclass
class TrainResult:
    best_checkpoint: Path
    metrics: dict
    output_dir: Path = field(default=Path("."))


@dataclass(frozen=True)
class Unit:
    example: int
    keys: tuple[str, ...]


def _units(method, cfg, ds: EncodedDataset) -> list[Unit]:
    per_example = method.unit_keys(cfg)
    return [Unit(i, keys) for i in range(len(ds.examples)) for keys in per_example]


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def plan_batches(n_units: int, batch_size: int, epochs: float, seed: int) -> list[list[int]]:
    """The unit indices of every optimiser step: a fresh seeded shuffle per epoch, last batch partial."""
    steps_per_epoch = math.ceil(n_units / batch_size)
    total = max(1, math.ceil(epochs * steps_per_epoch))
    plan = []
    for s in range(total):
        epoch, j = divmod(s, steps_per_epoch)
        order = _epoch_order(n_units, seed, epoch)
        plan.append(order[j * batch_size : (j + 1) * batch_size])
    return plan


def train(cfg, train_path: Path, val_path: Path | None, output_dir: Path, *,
          stop_after_steps: int | None = None, overwrite: bool = False) -> TrainResult:
    """Train ``cfg.model`` with ``cfg.train.method`` on ``train_path``; see the module docstring.

    ``stop_after_steps`` ends this call after that many optimiser steps (state saved), as an
    interrupted run would; calling again resumes. A directory holding another configuration's
    run raises :class:`RunMismatch` naming the differing keys, unless ``overwrite`` (start over).
    """
    output_dir = Path(output_dir)
    stages = method_registry.STAGES.get(cfg.train.method)
    if stages is None:
        method_registry.get(cfg.train.method)
        return _train_stage(cfg, Path(train_path), val_path, output_dir, stop_after_steps, overwrite)
    spec, per_stage, result = cfg.model, {}, None
    created = not output_dir.exists()
    for name in stages:
        sub = cfg.model_copy(deep=True)
        sub.model = spec
        sub.train.method = name
        try:
            result = _train_stage(sub, Path(train_path), val_path, output_dir / name, stop_after_steps, overwrite)
        except Exception:
            if created and output_dir.is_dir() and not any(output_dir.iterdir()):
                output_dir.rmdir()  # refused before anything was written: leave no empty directory
            raise
        if not result.metrics.get("finished"):
            return result
        # The next stage starts from and is referenced to this stage's best model.
        spec, per_stage[name] = str(result.best_checkpoint), result.metrics
    metrics = {**result.metrics, "method": cfg.train.method, "stages": per_stage}
    _write_json(output_dir / "result.json", {"best_checkpoint": str(result.best_checkpoint), "metrics": metrics})
    return TrainResult(result.best_checkpoint, metrics, output_dir)


def _write_json(path: Path, obj) -> None:
    write_json(path, obj, indent=1)


def _lora(model, cfg):
    from peft import LoraConfig, get_peft_model

    from clo.models import attention_parameter_names

    targets = sorted({n.rsplit(".", 2)[-2] for n in attention_parameter_names(model)})
    if not targets:
        raise ValueError(f"no attention projections found in {type(model).__name__} for LoRA")
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=targets, lora_dropout=0.0,
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


class _Stage:
    """One training stage; attributes instead of a dozen function arguments."""

    def __init__(self, cfg, train_path, val_path, output_dir, stop_after_steps):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        from clo.models import load_model, resolve_dtype

        self.cfg, self.tc = cfg, cfg.train
        self.out = output_dir
        self.stop_after = stop_after_steps
        self.method = method_registry.get(self.tc.method, cfg.langs)  # specialised to 2+ target languages
        # clo sets the dtypes itself (train.dtype, train.master_weights). accelerate keeps its
        # state process-wide: a transformers/TRL Trainer run earlier in this process leaves its
        # mixed precision there (TRL: bf16), which Accelerator() would silently inherit. Drop it
        # as TrainingArguments does, keeping PartialState (the process group).
        if AcceleratorState._shared_state.get("_mixed_precision", "no") != "no":
            AcceleratorState._reset_state()
        self.acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.device = self.acc.device
        self.sharding = dist.resolve_sharding(self.tc.sharding, self.acc)
        if self.sharding == "fsdp2" and self.world == 1:
            log.info("FSDP2 with one process shards nothing: training unsharded")
            self.sharding = "none"
        if self.sharding == "fsdp2" and self.tc.live_reference and self.tc.trainable != "lora":
            raise ValueError("train.live_reference with FSDP2: a second, unsharded model would not fit where "
                             "sharding is needed; use the precomputed reference (the default)")
        if self.sharding == "fsdp2" and self.tc.trainable == "lora":
            raise ValueError("train.trainable=lora with FSDP2 is not supported: LoRA's state is small, "
                             "use DDP (configs/accelerate/ddp.yaml)")
        torch.manual_seed(self.tc.seed)
        self.model, self.tok = load_model(cfg.model, dtype=self.tc.dtype, device=str(self.device),
                                          attn_implementation=self.tc.attn_implementation)
        self.compute_dtype = resolve_dtype(self.tc.dtype, str(self.device))
        self.master = None if self.tc.master_weights == "none" else torch.float32
        self.dtype_name = str(self.compute_dtype).replace("torch.", "")
        self.pad_id = self.tok.pad_token_id or 0
        self.train_ds = load_dataset(train_path, self.tok, self.tc.max_length, cfg.lang)
        self.val_ds = load_dataset(val_path, self.tok, self.tc.max_length, cfg.lang) if val_path else None
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            with (self.out / "rejected.jsonl").open("w", encoding="utf-8") as f:
                for name, ds in (("train", self.train_ds), ("val", self.val_ds)):
                    for r in ds.rejected if ds else []:
                        f.write(json.dumps({"split": name, "file": ds.path, **r}, ensure_ascii=False) + "\n")
        self.layout, self.varlen = packing_layout(self.model)
        on_gpu = self.device.type == "cuda"
        ckpt = self.tc.gradient_checkpointing
        self.checkpointing = on_gpu if ckpt == "auto" else bool(ckpt)
        self.max_tokens = self.tc.max_tokens_per_micro_batch or (GPU_TOKENS_PER_MICRO_BATCH if on_gpu else None)
        self.drift = None
        if val_path is not None and self.tc.drift_prompts > 0 and len(cfg.langs) == 1:  # one language's records
            from clo.train.drift import DriftProbe

            self.drift = DriftProbe(val_path, self.tok, cfg.lang, self.tc.drift_prompts, self.tc.drift_max_new_tokens)

    def compute(self):
        return compute_context(self.device, self.compute_dtype, self.master, self.sharding == "fsdp2")

    # -- model -------------------------------------------------------------------------------
    def prepare(self):
        tc = self.tc
        self.ref_model = None
        if self.method.needs_reference(tc) and tc.live_reference and tc.trainable != "lora":
            # The starting weights in the compute dtype: under autocast the policy's first
            # forward rounds its fp32 masters to exactly these.
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        if tc.trainable == "lora":
            self.model = _lora(self.model, tc)
            self.trainable_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        else:
            from clo.models import select_trainable

            self.trainable_names = select_trainable(self.model, tc.trainable)
        upcast_trainable(self.model, self.master)
        chunk_tokenwise(self.model, tc.tokenwise_chunk)
        if self.checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()
        wrapper = PackedLogProbs(self.model, tc.logit_chunk, self.varlen)
        if self.sharding == "fsdp2":
            self.wrapper = dist.shard_fsdp2(wrapper, self.model, self.compute_dtype, self.device, self.world)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.n_trainable = sum(p.numel() for p in params)
        opt = adamw(params, tc.lr, tc.weight_decay, self.device)  # fused on CUDA: no foreach temporary
        self.units = _units(self.method, tc, self.train_ds)
        self.plan = plan_batches(len(self.units), tc.batch_size, tc.epochs, tc.seed)
        per_example = len(self.method.unit_keys(tc))
        if getattr(tc, "batch_unit", "unit") == "example" and per_example > 1:
            # batch_size counts parallel examples: a step holds every unit of its examples (sft:
            # both rows), so that each method takes the same number of steps over the same data.
            self.plan = [[e * per_example + j for e in step for j in range(per_example)]
                         for step in plan_batches(len(self.units) // per_example, tc.batch_size, tc.epochs,
                                                  tc.seed)]
        from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

        self.sched = get_cosine_with_min_lr_schedule_with_warmup(opt, tc.warmup_steps, len(self.plan), min_lr=tc.min_lr)
        if self.sharding == "fsdp2":
            self.opt = opt
        else:
            self.wrapper, self.opt = self.acc.prepare(wrapper, opt)
        # accelerate's prepare may replace the parameters (its FSDP plugin does, even for one
        # process): clipping and the checks use the tensors the optimiser steps.
        self.params = dist.trained_parameters(self.model, self.opt)

    def _score(self, batch):
        """Summed log-probs through the (DDP/FSDP-wrapped) module, in the compute dtype."""
        with self.compute():
            return score(self.wrapper, batch)

    # -- reference ---------------------------------------------------------------------------
    def reference(self):
        """The starting model's log-probs of every train/val sequence, each process scoring its share."""
        self.ref, self.ref_info = {"train": None, "val": None}, {}
        if not self.method.needs_reference(self.tc) or self.tc.live_reference:
            return
        sets = {"train": self.train_ds, **({"val": self.val_ds} if self.val_ds else {})}
        cache = Path(self.tc.reference_cache) if self.tc.reference_cache else None
        self.ref, self.ref_info = cached_reference(
            self.model, self.cfg.model, self.dtype_name, sets, cache, rank=self.rank, world=self.world,
            score_fn=self._reference_score, pad_id=self.pad_id,
            row_capacity=None if self.layout == "one_row" else "longest")

    @torch.no_grad()
    def _reference_score(self, batch):
        if self.ref_model is not None:
            from clo.train.logprobs import packed_sequence_logps

            with self.compute():
                return packed_sequence_logps(self.ref_model, batch, self.tc.logit_chunk)[0]
        if self.tc.trainable == "lora":  # the same weights with the adapter switched off
            with self.model.disable_adapter():
                return self._score(batch)
        return self._score(batch)

    # -- one batch ---------------------------------------------------------------------------
    def _sequences(self, ds, units):
        return [ds.examples[u.example].seqs[k] for u in units for k in u.keys]

    def _ref_for(self, split, units, batch):
        if self.ref.get(split) is not None:
            rows = torch.tensor([u.example for u in units])
            cols = torch.tensor([[self.train_ds.keys.index(k) for k in u.keys] for u in units])  # cache columns
            return self.ref[split][rows[:, None], cols].to(self.device)
        return self._reference_score(batch).view(len(units), -1)

    def _loss(self, split, ds, units, share, weight, nll_tokens_global, n_global):
        """(loss contribution of these units, metrics, token count).

        ``share`` is the units' fraction of the global batch; ``weight`` is 0 for a filler
        micro-batch (it runs only so that this process takes part in every collective).
        """
        seqs = self._sequences(ds, units)
        cap = None if self.layout == "one_row" else (self.tc.pack_length or max(len(p) + len(r) for p, r in seqs))
        batch = pack_sequences(seqs, cap, self.pad_id).to(self.device)
        sums = self._score(batch).view(len(units), -1)
        ref = self._ref_for(split, units, batch) if self.method.needs_reference(self.tc) else None
        nll = None
        slots = self.method.nll_slots(self.tc, units[0].keys)
        if slots:
            # This micro-batch's NLL sum over the global batch's token count, rescaled by
            # 1/share so that objective(...) * share is its exact share of the global loss.
            nll = -sums[:, slots].sum() / (nll_tokens_global * share)
        loss, metrics = self.method.objective(sums, ref, nll, self.tc, batch.response_counts().view(len(units), -1))
        w = share * weight
        return loss * w, {k: v * w for k, v in metrics.items()}, batch.n_tokens if weight else 0

    def _nll_tokens(self, ds, units):
        """L_SFT's normaliser for the global batch ``units``: its NLL response tokens (``token``),
        or its NLL sequences (``sequence``: the paper's eq. 9, each sequence's summed NLL
        averaged over sequences)."""
        slots = self.method.nll_slots(self.tc, units[0].keys)
        if getattr(self.tc, "nll_reduction", "token") == "sequence":
            return sum(len(slots) for _ in units)
        return sum(len(ds.examples[u.example].seqs[u.keys[s]][1]) for u in units for s in slots)

    def _micro(self, ds, units, idx):
        def tokens(i):
            return sum(ds.examples[units[i].example].length(k) for k in units[i].keys)

        return dist.micro_batches(idx, self.rank, self.world, tokens, max_units=self.tc.micro_batch_size,
                                  max_tokens=self.max_tokens)

    def check_packing(self):
        """Packed log-probs equal padded ones for the active attention implementation (first batch)."""
        us = [self.units[i] for i in self.plan[0][:2]]
        seqs = self._sequences(self.train_ds, us)[:8]
        cap = None if self.layout == "one_row" else max(len(p) + len(r) for p, r in seqs)
        with torch.no_grad():
            diff = check_packing(self._score, seqs, cap, self.pad_id, self.compute_dtype, self.device)
        log.info("packing check (%s, %s rows): packed = padded within %.2g nats per token",
                 getattr(base_model(self.model).config, "_attn_implementation", None), self.layout, diff)
        return diff

    # -- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        units = _units(self.method, self.tc, self.val_ds)
        self.wrapper.eval()
        totals: dict[str, torch.Tensor] = {}
        bs = self.tc.batch_size
        for start in range(0, len(units), bs):
            idx = list(range(start, min(start + bs, len(units))))
            glob = [units[i] for i in idx]
            weight = len(idx) / len(units)  # batches weighted by size: the mean over all val units
            nll_tok = self._nll_tokens(self.val_ds, glob)
            for mb, real in self._micro(self.val_ds, units, idx):
                us = [units[i] for i in mb]
                _, m, _ = self._loss("val", self.val_ds, us, len(mb) / len(idx), 1.0 if real else 0.0,
                                     nll_tok, len(idx))
                for k, v in m.items():
                    totals[k] = totals.get(k, 0) + v * weight
        self.wrapper.train()
        return {f"val/{k}": v.item() for k, v in self._reduce(totals).items()}

    def _reduce(self, metrics: dict) -> dict:
        if self.world == 1 or not metrics:
            return metrics
        keys = sorted(metrics)
        vec = torch.stack([torch.as_tensor(metrics[k], dtype=torch.float32, device=self.device) for k in keys])
        vec = dist.all_reduce_sum(vec, self.world)
        return dict(zip(keys, vec))

    # -- checkpoints -------------------------------------------------------------------------
    def save_state(self, step, best, history_tail):
        if self.sharding == "fsdp2":
            return self._save_sharded_state(step, best, history_tail)
        # Collectives first: every process takes part, process 0 writes.
        trainable = dist.trainable_state(self.model)
        optimizer = dist.optimizer_state(self.model, self.opt)
        if not self.acc.is_main_process:
            return
        state = {
            "step": step, "best": best, "trainable": trainable, "best_trainable": self.best_trainable,
            "optimizer": optimizer, "scheduler": self.sched.state_dict(),
            "rng": torch.get_rng_state(), "plan_len": len(self.plan), "history_tail": history_tail,
        }
        d = self.out / "last"
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / "state.pt") as tmp:
            torch.save(state, tmp)
        _drop_shards(d, keep=None)  # a sharded state resumed without sharding is superseded

    def _save_sharded_state(self, step, best, history_tail):
        """FSDP2: each process writes its shards of the tensors to a fresh ``last/shards-*/``
        (``torch.distributed.checkpoint``); then process 0 writes the small ``state.pt`` naming it,
        atomically, and drops older shard directories, so ``state.pt`` always names a complete set."""
        import uuid

        import torch.distributed as tdist

        d = self.out / "last"
        name = [f"{dist.SHARDS_PREFIX}{step:07d}-{uuid.uuid4().hex[:8]}" if self.acc.is_main_process else None]
        tdist.broadcast_object_list(name, src=0)
        name = name[0]
        groups = dist.save_shards(d / name, self.model, self.opt, self.best_trainable)
        if self.acc.is_main_process:  # dcp.save returns once every process's shards and .metadata are written
            state = {
                "step": step, "best": best, "shards": name, "param_groups": groups,
                "has_best": self.best_trainable is not None, "scheduler": self.sched.state_dict(),
                "rng": torch.get_rng_state(), "plan_len": len(self.plan), "history_tail": history_tail,
            }
            with atomic_path(d / "state.pt") as tmp:
                torch.save(state, tmp)
            _drop_shards(d, keep=name)
        self.acc.wait_for_everyone()

    def load_state(self):
        self.best_trainable = None
        path = self.out / "last" / "state.pt"
        if not path.is_file():
            return 0, {"loss": None, "step": None}, {}
        state = read_state(path)
        if state["plan_len"] != len(self.plan):
            raise RunMismatch(f"{path}: checkpoint was made for {state['plan_len']} steps, this config "
                              f"plans {len(self.plan)}; use a new output directory for a changed config")
        if "shards" in state:
            try:
                self.best_trainable = dist.load_shards(path.parent / state["shards"], self.model, self.opt,
                                                       state["param_groups"], state["has_best"])
            except dist.ShardsError as e:
                raise StateFileError(f"{e}; delete {path.parent} to restart from step 0, or pass --overwrite "
                                     "to start the run over") from None
        else:
            dist.load_trainable(self.model, state["trainable"])
            dist.load_optimizer_state(self.model, self.opt, state["optimizer"])
            self.best_trainable = state.get("best_trainable")
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        log.info("resuming %s from step %d", self.out, state["step"])
        return state["step"], state["best"], state.get("history_tail", {})

    def keep_best(self):
        """The trainable tensors of the best model so far, in memory (process 0; under FSDP2 each
        process its shards, on the CPU); no disk write."""
        if self.sharding == "fsdp2":
            self.best_trainable = dist.trainable_shards(self.model)
            return
        state = dist.trainable_state(self.model)
        self.best_trainable = state if self.acc.is_main_process else None

    def save_model(self, name: str, trainable: dict | None):
        """A full loadable checkpoint (LoRA: merged, and the adapter in ``adapter/``) with the
        tokenizer, written once and atomically; ``trainable`` (full tensors) replaces the current
        trainable weights. Weights are written in the dtype the model was loaded in."""
        trainable = dist.full_tensors(trainable, self.device)  # FSDP2's kept shards: collective
        if self.tc.save == "trained":
            return self._save_trained(name, trainable)
        full = dist.full_model_state(self.model)  # collective under FSDP2
        if not self.acc.is_main_process:
            return
        if trainable:
            full.update(trainable)
        full = {k: v.to(self.compute_dtype) if v.is_floating_point() else v for k, v in full.items()}
        with atomic_dir(self.out / name) as tmp:
            if self.tc.trainable == "lora":
                self.model.save_pretrained(tmp / "adapter", state_dict=full, safe_serialization=True)
                self.model.load_state_dict(full, strict=False)
                merged = self.model.merge_and_unload()  # the run is over: merge in place, no copy
                merged.save_pretrained(tmp, safe_serialization=True)
            else:
                base_model(self.model).save_pretrained(tmp, state_dict=full, safe_serialization=True)
            self.tok.save_pretrained(tmp)

    def _save_trained(self, name: str, trainable: dict | None):
        """``train.save: trained``: the trained tensors and the base model's identity (:mod:`clo.train.saved`)."""
        from clo.train.saved import write_trained_only

        current = dist.trainable_state(self.model)  # collective under FSDP2: every process calls
        if not self.acc.is_main_process:
            return
        tensors = {k: v.to(self.compute_dtype) if v.is_floating_point() else v
                   for k, v in (trainable or current).items()}
        with atomic_dir(self.out / name) as tmp:
            write_trained_only(tmp, tensors, self.cfg.model, self.dtype_name, self.tok)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        tc = self.tc
        self.prepare()
        t_ref = time.perf_counter()
        self.reference()
        t_ref = time.perf_counter() - t_ref
        step, best, tail = self.load_state()
        self.packing_diff = self.check_packing()
        first_micro = self._micro(self.train_ds, self.units, self.plan[min(step, len(self.plan) - 1)])
        self.memory = memory_plan(
            self.model, world=self.world, sharded=self.sharding == "fsdp2", checkpointing=self.checkpointing,
            tokens_per_micro_batch=max(sum(self.train_ds.examples[self.units[i].example].length(k)
                                           for i in mb for k in self.units[i].keys) for mb, _ in first_micro))
        log.info("planned memory per process (GiB): %s", ", ".join(f"{k}={v}" for k, v in self.memory.items()))
        trackers = Trackers(self.out, step, enabled=self.acc.is_main_process, report_to=tc.report_to)
        if step == 0 and self.drift is not None and self.val_ds is not None:
            # The untrained model's answers: drift curves start where the model started.
            d0 = self._drift()
            if d0:
                trackers.log(d0, 0)
        save_every = tc.eval_every
        bar = tqdm(total=len(self.plan), initial=step, desc=f"train {tc.method}", unit="step",
                   disable=not self.acc.is_main_process)
        t_train, units_done, tokens_done = 0.0, 0, 0
        last_metrics: dict = tail.get("train", {})
        val_metrics: dict = tail.get("val", {})
        end = len(self.plan) if self.stop_after is None else min(len(self.plan), step + self.stop_after)
        try:
            while step < end:
                t0 = time.perf_counter()
                dist.reset_peak_memory(self.device)
                idx = self.plan[step]
                glob = [self.units[i] for i in idx]
                nll_tok = self._nll_tokens(self.train_ds, glob)
                micro = self._micro(self.train_ds, self.units, idx)
                totals: dict[str, torch.Tensor] = {}
                n_tok = 0
                for j, (mb, real) in enumerate(micro):
                    us = [self.units[i] for i in mb]
                    # DDP and FSDP2 average gradients over processes; the loss is already a share of
                    # the global batch, so scale by the process count to undo the average.
                    with dist.sync_gradients(self.wrapper, self.sharding, self.acc, last=j == len(micro) - 1):
                        loss, m, nt = self._loss("train", self.train_ds, us, len(mb) / len(idx),
                                                 1.0 if real else 0.0, nll_tok, len(idx))
                        self.acc.backward(loss * self.world)
                    n_tok += nt
                    # The loss itself, not only its metrics: a non-finite loss with finite
                    # metrics would still poison the weights through backward.
                    m = {**m, "_objective": loss.detach()}
                    for k, v in m.items():
                        totals[k] = totals.get(k, 0) + v
                totals = self._reduce(totals)
                metrics = {k: float(v) for k, v in totals.items()}
                objective = metrics.pop("_objective")
                if not math.isfinite(objective) or not all(math.isfinite(v) for v in metrics.values()):
                    raise TrainingDiverged(
                        f"non-finite loss at step {step + 1} (loss {objective}, {metrics}); stopped before the optimiser step. "
                        f"The last good state is {self.out / 'last'} (step {step - step % save_every})")
                if tc.max_grad_norm is not None:
                    metrics["grad_norm"] = dist.grad_norm_clip(self.params, tc.max_grad_norm)
                lr = self.sched.get_last_lr()[0]
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                step += 1
                dt = time.perf_counter() - t0
                t_train += dt
                units_done += len(idx)
                tokens_done += n_tok * self.world
                metrics.update(lr=lr, step_s=dt, units_per_s=len(idx) / dt,
                               peak_mem_gib=round(dist.peak_memory_gib(self.device), 3))
                last_metrics = metrics
                trackers.log({f"train/{k}": v for k, v in metrics.items()}, step)
                if step % tc.log_every == 0 or step == len(self.plan):
                    log.info("step %d/%d: %s", step, len(self.plan),
                             ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
                bar.set_postfix({k: f"{metrics[k]:.4g}" for k in ("loss", "nll", "cl", "acc_en", "acc_tgt",
                                                                   "accuracy") if k in metrics})
                bar.update(1)
                if step % tc.eval_every == 0 or step == len(self.plan):
                    best, val_metrics = self._evaluate(step, best, trackers)
                if step % save_every == 0 or step == len(self.plan) or step == end:
                    self.save_state(step, best, {"train": last_metrics, "val": val_metrics})
        finally:
            bar.close()
            trackers.close()
        finished = step == len(self.plan)
        if finished:
            if self.val_ds is None:  # without validation data the final model is the one kept
                self.best_trainable, best = None, {"loss": None, "step": step}
            self.save_model("best", self.best_trainable)
        metrics = {
            "method": tc.method, "finished": finished, "steps": step, "total_steps": len(self.plan),
            "units": len(self.units), "examples": len(self.train_ds.examples),
            "train_loss": last_metrics.get("loss"), "train_metrics": last_metrics,
            "best_val_loss": best["loss"], "best_step": best["step"],
            "final_val_loss": val_metrics.get("val/loss"), "val_metrics": val_metrics,
            "units_per_s": units_done / t_train if t_train else None,
            "examples_per_s": units_done / len(self.method.unit_keys(tc)) / t_train if t_train else None,
            "tokens_per_s": tokens_done / t_train if t_train else None,
            "reference_s": round(t_ref, 3), "reference": self.ref_info, "train_s": round(t_train, 3),
            "trainable_params": self.n_trainable, "trainable": tc.trainable,
            "rejected": {"train": len(self.train_ds.rejected), "val": len(self.val_ds.rejected) if self.val_ds else 0},
            "truncated": self.train_ds.truncated, "processes": self.world, "device": str(self.device),
            "sharding": self.sharding, "compute_dtype": self.dtype_name, "master_weights": tc.master_weights,
            "gradient_checkpointing": self.checkpointing, "packing": {"layout": self.layout, "varlen": self.varlen,
                                                                      "max_diff_per_token": self.packing_diff},
            "memory_plan_gib": self.memory, "peak_mem_gib": last_metrics.get("peak_mem_gib"),
        }
        if finished and self.acc.is_main_process:
            _write_json(self.out / "result.json", {"best_checkpoint": str(self.out / "best"), "metrics": metrics})
            from clo.train.card import write_model_card

            write_model_card(self.out / "best", metrics, self.cfg)
            if not tc.keep_state:  # the run is over: its resumable state has no further use
                shutil.rmtree(self.out / "last", ignore_errors=True)
        self.acc.wait_for_everyone()
        return TrainResult(self.out / "best", metrics, self.out)

    def _drift(self) -> dict:
        """Language and echo shares of greedy answers to held-out prompts (process 0 generates)."""
        if not self.drift or not self.acc.is_main_process:
            return {}
        if self.sharding == "fsdp2":  # generation would need every process and unsharded weights
            return {}
        with self.compute():
            return self.drift.measure(base_model(self.model))

    def _evaluate(self, step, best, trackers):
        if self.val_ds is None:
            return best, {}
        vm = self.validate()
        if not math.isfinite(vm["val/loss"]):
            raise TrainingDiverged(f"non-finite validation loss at step {step}: {vm}")
        vm["val/best"] = min(vm["val/loss"], best["loss"] if best["loss"] is not None else math.inf)
        vm.update(self._drift())
        trackers.log(vm, step)
        log.info("step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in vm.items()))
        if best["loss"] is None or vm["val/loss"] < best["loss"]:
            best = {"loss": vm["val/loss"], "step": step}
            self.keep_best()
        return best, vm


def read_state(path: Path) -> dict:
    """``last/state.pt`` as :meth:`_Stage.save_state` wrote it: tensors, numbers, strings, lists
    and dicts only. ``weights_only=True``: a pickle placed there (a shared or downloaded run
    directory) is refused, never executed. A torn, foreign or incomplete file is a
    :class:`StateFileError` naming it."""
    import pickle
    import zipfile

    hint = "delete it to restart from step 0, or pass --overwrite to start the run over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as e:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise StateFileError(f"{path}: not a training state clo can load safely ({first[:200]}); {hint}") from None
    if not isinstance(state, dict):
        raise StateFileError(f"{path}: not a training state (a {type(state).__name__}, not a dict); {hint}")
    keys = SHARDED_STATE_KEYS if "shards" in state else STATE_KEYS
    missing = [k for k in keys if k not in state]
    if missing:
        raise StateFileError(f"{path}: field {missing[0]!r} missing (a training state has "
                             f"{', '.join(keys)}); {hint}")
    kinds = ((("shards", str), ("param_groups", list), ("has_best", bool)) if "shards" in state
             else (("trainable", dict), ("optimizer", dict)))
    for key, kind in (("step", int), ("plan_len", int), *kinds, ("scheduler", dict), ("rng", torch.Tensor)):
        if kind is bool and isinstance(state[key], bool):
            continue
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise StateFileError(f"{path}: field {key!r} is a {type(state[key]).__name__}, not a "
                                 f"{kind.__name__}; {hint}")
    shards = state.get("shards")
    # A name inside last/, never a path elsewhere: the directory is data and names only its own parts.
    if shards is not None and (not shards.startswith(dist.SHARDS_PREFIX) or Path(shards).name != shards
                               or not (path.parent / shards).is_dir()):
        raise StateFileError(f"{path}: field 'shards' {shards[:80]!r} is not a shard directory next to it; {hint}")
    return state


def _drop_shards(last: Path, keep: str | None) -> None:
    """Remove ``last``'s shard directories but ``keep``: superseded by the state just written."""
    for p in last.glob(f"{dist.SHARDS_PREFIX}*"):
        if p.name != keep:
            shutil.rmtree(p, ignore_errors=True)


def _file_digest(path: Path | None) -> str | None:
    return sha256_file(path) if path is not None else None


def run_inputs(cfg, train_path: Path, val_path: Path | None) -> dict:
    """What a training directory's results depend on: the run is these inputs' and no other's."""
    train_cfg = {k: v for k, v in cfg.train.model_dump(mode="json").items() if k not in OPERATIONAL_KEYS}
    return {"model": model_identity(cfg.model), "lang": cfg.lang, "train": train_cfg,
            "data": {"train": _file_digest(train_path), "val": _file_digest(val_path)}}


def _read_record(record: Path) -> dict | None:
    """``run.json``, or None where there is none. One that is not what clo writes (edited by hand,
    copied in part, another program's) is a :class:`StateFileError`."""
    if not record.is_file():
        return None
    try:
        obj = json.loads(record.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise StateFileError(f"{record}:{e.lineno}: not valid JSON ({e.msg}); pass --overwrite to start "
                             "the run over, or choose another output directory") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("inputs"), dict) or "fingerprint" not in obj:
        raise StateFileError(f"{record}: field 'inputs' or 'fingerprint' missing; pass --overwrite to start "
                             "the run over, or choose another output directory")
    return obj


def _claim_directory(output_dir: Path, inputs: dict, overwrite: bool, timeout_s: int | None = None) -> None:
    """Make ``output_dir`` this configuration's: refuse another's unless ``overwrite`` (then clear it).

    Every process reads the directory before process 0 changes it, and all take the same path
    through the barriers: one that returned early would desynchronise every later collective.
    The process group starts here (``timeout_s``: ``train.process_group_timeout_s``).
    """
    import datetime

    from accelerate import PartialState

    group = {"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}
    state = PartialState(cpu=not torch.cuda.is_available(), **group)
    dist.check_shared_directory(output_dir, state.process_index, state.num_processes, state.device)
    record = output_dir / "run.json"
    inputs = json.loads(json.dumps(inputs, default=str))  # as stored: tuples become lists
    fp = fingerprint(inputs)
    state.wait_for_everyone()
    try:
        old = _read_record(record)
    except StateFileError:
        if not overwrite:
            raise
        old = {"fingerprint": None, "inputs": {"run.json": "unreadable"}}
    started = output_dir.is_dir() and any((output_dir / n).exists() for n in ("last", "result.json", "best"))
    state.wait_for_everyone()
    if old is not None and old.get("fingerprint") == fp:
        return
    if old is not None or started:
        # Equal inputs under another fingerprint: a run.json whose fingerprint was computed another
        # way (by another clo version); it is refused like any other, never silently taken over.
        keys = ((differing_keys(old["inputs"], inputs) or ["(none: run.json's fingerprint is of another format)"])
                if old is not None else ["(no run.json)"])
        if not overwrite:
            raise RunMismatch(f"{output_dir} holds a run of another configuration (differing: {', '.join(keys)}); "
                              f"pass --overwrite to start over there, or choose another output directory")
        log.warning("%s: another configuration's run (differing: %s); starting over", output_dir, ", ".join(keys))
        if state.is_main_process:
            shutil.rmtree(output_dir)
    if state.is_main_process:
        _write_json(record, {"fingerprint": fp, "inputs": inputs})
    state.wait_for_everyone()


def _train_stage(cfg, train_path: Path, val_path, output_dir: Path, stop_after_steps, overwrite=False) -> TrainResult:
    val_path = Path(val_path) if val_path else None
    before = {p.name for p in output_dir.iterdir()} if output_dir.is_dir() else None
    _claim_directory(output_dir, run_inputs(cfg, train_path, val_path), overwrite,
                     timeout_s=getattr(cfg.train, "process_group_timeout_s", None))
    done = output_dir / "result.json"
    if done.is_file():
        obj = json.loads(done.read_text())
        log.info("%s: already finished, returning its result", output_dir)
        return TrainResult(Path(obj["best_checkpoint"]), obj["metrics"], output_dir)
    try:
        return _Stage(cfg, train_path, val_path, output_dir, stop_after_steps).run()
    except Exception:
        _undo_claim(output_dir, before)
        raise


def _undo_claim(output_dir: Path, before: set[str] | None) -> None:
    """A run refused before its first saved state (bad data, a model that does not load, a bad
    option) leaves the directory as it found it: no ``run.json`` that would claim it for a run
    that never was. A run that saved a state keeps everything, to resume."""
    from accelerate import PartialState

    if not PartialState().is_main_process or (output_dir / "last").exists() or (output_dir / "result.json").exists():
        return
    if before is None:
        shutil.rmtree(output_dir, ignore_errors=True)
        return
    for p in output_dir.iterdir() if output_dir.is_dir() else ():
        if p.name not in before:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


__all__ = ["RunMismatch", "TrainResult", "TrainingDiverged", "plan_batches", "train"]
