"""The training loop: CLO and the baselines, on accelerate (one or many processes).

Layout of ``output_dir`` (one stage; ``sft+dpo`` has ``sft/`` and ``dpo/`` stage directories):

- ``last/state.pt``: the resumable state (trainable tensors, optimiser, scheduler, RNG, step,
  best validation loss); written every ``save_every`` (= ``eval_every``) steps, atomically.
- ``best/``: the model with the lowest validation loss (without validation data: the final one),
  a full transformers checkpoint with its tokenizer (LoRA merged), loadable by
  ``clo.models.load_model(str(path))``.
- ``log.jsonl`` (+ ``tensorboard/`` when installed), ``rejected.jsonl``, ``result.json`` (the
  run is finished when it exists: calling :func:`train` again returns it at once).

Batches: the global batch of ``batch_size`` units is split evenly over processes, and each
process's share into micro-batches. Every micro-batch contributes its exact share of the global
loss (example means weighted by ``b/B``, token means normalised by the global token count), so
the gradient does not depend on the number of processes or micro-batches.
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

from clo.train import methods as method_registry
from clo.train.data import EncodedDataset, load_dataset
from clo.train.logprobs import PackedLogProbs, pack_sequences, packed_sequence_logps
from clo.train.losses import KEYS
from clo.train.reference import cached_reference
from clo.train.tracking import Trackers

log = logging.getLogger(__name__)

KEY_COLUMN = {k: j for j, k in enumerate(KEYS)}
FLAT_ATTENTION = ("flash_attention_2", "flash_attention_3", "flex_attention")


class TrainingDiverged(RuntimeError):
    pass


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
          stop_after_steps: int | None = None) -> TrainResult:
    """Train ``cfg.model`` with ``cfg.train.method`` on ``train_path``; see the module docstring.

    ``stop_after_steps`` ends this call after that many optimiser steps (state saved), as an
    interrupted run would; calling again resumes.
    """
    output_dir = Path(output_dir)
    stages = method_registry.STAGES.get(cfg.train.method)
    if stages is None:
        method_registry.get(cfg.train.method)
        return _train_stage(cfg, Path(train_path), val_path, output_dir, stop_after_steps)
    spec, per_stage, result = cfg.model, {}, None
    for name in stages:
        sub = cfg.model_copy(deep=True)
        sub.model = spec
        sub.train.method = name
        result = _train_stage(sub, Path(train_path), val_path, output_dir / name, stop_after_steps)
        if not result.metrics.get("finished"):
            return result
        # The next stage starts from and is referenced to this stage's best model.
        spec, per_stage[name] = str(result.best_checkpoint), result.metrics
    metrics = {**result.metrics, "method": cfg.train.method, "stages": per_stage}
    _write_json(output_dir / "result.json", {"best_checkpoint": str(result.best_checkpoint), "metrics": metrics})
    return TrainResult(result.best_checkpoint, metrics, output_dir)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=str))
    tmp.replace(path)


def _lora(model, cfg):
    from peft import LoraConfig, get_peft_model

    from clo.models import attention_parameter_names

    targets = sorted({n.rsplit(".", 2)[-2] for n in attention_parameter_names(model)})
    if not targets:
        raise ValueError(f"no attention projections found in {type(model).__name__} for LoRA")
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=targets, lora_dropout=0.0,
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


class _Stage:
    """One training stage; attributes instead of a dozen function arguments."""

    def __init__(self, cfg, train_path, val_path, output_dir, stop_after_steps):
        from accelerate import Accelerator

        from clo.models import load_model, resolve_dtype

        self.cfg, self.tc = cfg, cfg.train
        self.out = output_dir
        self.stop_after = stop_after_steps
        self.method = method_registry.get(self.tc.method)
        from accelerate.state import AcceleratorState

        # clo sets the dtype itself (train.dtype) and never autocasts. accelerate keeps its state
        # process-wide: a transformers/TRL Trainer run earlier in this process leaves its mixed
        # precision there (TRL: bf16), which Accelerator() would silently inherit. Drop it as
        # TrainingArguments does, keeping PartialState (the process group).
        if AcceleratorState._shared_state.get("_mixed_precision", "no") != "no":
            AcceleratorState._reset_state()
        self.acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        if self.tc.batch_size % self.world:
            raise ValueError(f"train.batch_size {self.tc.batch_size} is not divisible by {self.world} processes")
        torch.manual_seed(self.tc.seed)
        self.model, self.tok = load_model(cfg.model, dtype=self.tc.dtype, device=str(self.acc.device),
                                          attn_implementation=self.tc.attn_implementation)
        self.dtype_name = str(resolve_dtype(self.tc.dtype, str(self.acc.device))).replace("torch.", "")
        self.pad_id = self.tok.pad_token_id or 0
        self.train_ds = load_dataset(train_path, self.tok, self.tc.max_length, cfg.lang)
        self.val_ds = load_dataset(val_path, self.tok, self.tc.max_length, cfg.lang) if val_path else None
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            with (self.out / "rejected.jsonl").open("w", encoding="utf-8") as f:
                for name, ds in (("train", self.train_ds), ("val", self.val_ds)):
                    for r in ds.rejected if ds else []:
                        f.write(json.dumps({"split": name, "file": ds.path, **r}, ensure_ascii=False) + "\n")
        attn = getattr(self.model.config, "_attn_implementation", None)
        self.flat = attn in FLAT_ATTENTION

    # -- reference ---------------------------------------------------------------------------
    def reference(self):
        self.ref = {"train": None, "val": None}
        self.ref_info, self.ref_model = {}, None
        if not self.method.needs_reference:
            return
        if self.tc.live_reference:
            if self.tc.trainable != "lora":  # with LoRA the adapter-disabled model is the reference
                self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
            return
        sets = {"train": self.train_ds, **({"val": self.val_ds} if self.val_ds else {})}
        cache = Path(self.tc.reference_cache) if self.tc.reference_cache else None
        kwargs = {"chunk_size": self.tc.logit_chunk, "pad_id": self.pad_id,
                  "row_capacity": None if self.flat else "longest"}
        # One process computes and stores, the others read the cache it wrote.
        if self.acc.is_main_process:
            self.ref, self.ref_info = cached_reference(self.model, self.cfg.model, self.dtype_name, sets, cache, **kwargs)
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            self.ref, self.ref_info = cached_reference(self.model, self.cfg.model, self.dtype_name, sets, cache, **kwargs)

    # -- model -------------------------------------------------------------------------------
    def prepare(self):
        tc = self.tc
        if tc.trainable == "lora":
            self.model = _lora(self.model, tc)
            self.trainable_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        else:
            from clo.models import select_trainable

            self.trainable_names = select_trainable(self.model, tc.trainable)
        if tc.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.n_trainable = sum(p.numel() for p in params)
        opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
        self.units = _units(self.method, tc, self.train_ds)
        self.plan = plan_batches(len(self.units), tc.batch_size, tc.epochs, tc.seed)
        from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

        self.sched = get_cosine_with_min_lr_schedule_with_warmup(opt, tc.warmup_steps, len(self.plan), min_lr=tc.min_lr)
        self.wrapper, self.opt = self.acc.prepare(PackedLogProbs(self.model, tc.logit_chunk), opt)

    # -- one batch ---------------------------------------------------------------------------
    def _sequences(self, ds, units):
        return [ds.examples[u.example].seqs[k] for u in units for k in u.keys]

    def _ref_for(self, split, ds, units, batch):
        if self.ref.get(split) is not None:
            rows = torch.tensor([u.example for u in units])
            cols = torch.tensor([[KEY_COLUMN[k] for k in u.keys] for u in units])
            return self.ref[split][rows[:, None], cols].to(self.acc.device)
        with torch.no_grad():
            if self.ref_model is not None:
                sums, _ = packed_sequence_logps(self.ref_model, batch, self.tc.logit_chunk)
            else:  # LoRA: the same weights with the adapter switched off
                peft_model = self.acc.unwrap_model(self.wrapper).model
                with peft_model.disable_adapter():
                    sums, _ = packed_sequence_logps(peft_model, batch, self.tc.logit_chunk)
        return sums.view(len(units), -1)

    def _loss(self, split, ds, units, frac, nll_tokens_global, n_global, forward):
        """(loss contribution of these units, metrics weighted by ``frac``, token count)."""
        seqs = self._sequences(ds, units)
        cap = None if self.flat else (self.tc.pack_length or max(len(p) + len(r) for p, r in seqs))
        batch = pack_sequences(seqs, cap, self.pad_id).to(self.acc.device)
        sums = forward(batch).view(len(units), -1)
        ref = self._ref_for(split, ds, units, batch) if self.method.needs_reference else None
        nll = None
        slots = self.method.nll_slots(self.tc, units[0].keys)
        if slots:
            # This micro-batch's NLL sum over the global batch's token count, rescaled by 1/frac
            # so that objective(...) * frac is its exact share of the global loss.
            nll = -sums[:, slots].sum() / (nll_tokens_global * frac)
        loss, metrics = self.method.objective(sums, ref, nll, self.tc)
        return loss * frac, {k: v * frac for k, v in metrics.items()}, batch.n_tokens

    def _nll_tokens(self, ds, units):
        slots = self.method.nll_slots(self.tc, units[0].keys)
        return sum(len(ds.examples[u.example].seqs[u.keys[s]][1]) for u in units for s in slots)

    def _split(self, idx):
        """This process's share of a global batch, then its micro-batches."""
        local = idx[self.rank :: self.world]
        mb = self.tc.micro_batch_size or len(local) or 1
        return [local[i : i + mb] for i in range(0, len(local), mb)]

    # -- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        units = _units(self.method, self.tc, self.val_ds)
        self.model.eval()
        totals: dict[str, torch.Tensor] = {}
        bs = self.tc.batch_size
        for start in range(0, len(units), bs):
            idx = list(range(start, min(start + bs, len(units))))
            glob = [units[i] for i in idx]
            weight = len(idx) / len(units)  # batches weighted by size: the mean over all val units
            nll_tok = self._nll_tokens(self.val_ds, glob)
            for mb in self._split(idx):
                us = [units[i] for i in mb]
                frac = len(us) / len(idx)
                _, m, _ = self._loss("val", self.val_ds, us, frac, nll_tok, len(idx),
                                     lambda b: packed_sequence_logps(self.model, b, self.tc.logit_chunk)[0])
                for k, v in m.items():
                    totals[k] = totals.get(k, 0) + v * weight
        self.model.train()
        return {f"val/{k}": v.item() for k, v in self._reduce(totals).items()}

    def _reduce(self, metrics: dict) -> dict:
        if self.world == 1 or not metrics:
            return metrics
        keys = sorted(metrics)
        vec = torch.stack([torch.as_tensor(metrics[k], dtype=torch.float32, device=self.acc.device) for k in keys])
        vec = self.acc.reduce(vec, reduction="sum")
        return dict(zip(keys, vec))

    # -- checkpoints -------------------------------------------------------------------------
    def save_state(self, step, best, history_tail):
        if not self.acc.is_main_process:
            return
        model = self.acc.unwrap_model(self.wrapper).model
        state = {
            "step": step, "best": best, "trainable": _trainable_state(model),
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "rng": torch.get_rng_state(), "plan_len": len(self.plan), "history_tail": history_tail,
        }
        d = self.out / "last"
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "state.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(d / "state.pt")

    def load_state(self):
        path = self.out / "last" / "state.pt"
        if not path.is_file():
            return 0, {"loss": None, "step": None}, {}
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["plan_len"] != len(self.plan):
            raise RuntimeError(f"{path}: checkpoint was made for {state['plan_len']} steps, this config "
                               f"plans {len(self.plan)}; use a new output directory for a changed config")
        model = self.acc.unwrap_model(self.wrapper).model
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in state["trainable"].items():
                params[n].copy_(t)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        log.info("resuming %s from step %d", self.out, state["step"])
        return state["step"], state["best"], state.get("history_tail", {})

    def save_model(self, name: str):
        """A full loadable checkpoint (LoRA: merged) with the tokenizer, written atomically."""
        if not self.acc.is_main_process:
            return
        model = self.acc.unwrap_model(self.wrapper).model
        target = self.out / name
        tmp = self.out / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if self.tc.trainable == "lora":
            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(tmp, safe_serialization=True)
            del merged
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        self.tok.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        tc = self.tc
        t_ref = time.perf_counter()
        self.reference()
        t_ref = time.perf_counter() - t_ref
        self.prepare()
        step, best, tail = self.load_state()
        trackers = Trackers(self.out, step, enabled=self.acc.is_main_process)
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
                idx = self.plan[step]
                glob = [self.units[i] for i in idx]
                nll_tok = self._nll_tokens(self.train_ds, glob)
                micro = self._split(idx)
                totals: dict[str, torch.Tensor] = {}
                n_tok = 0
                for j, mb in enumerate(micro):
                    us = [self.units[i] for i in mb]
                    # DDP averages gradients over processes; the loss is already a share of the
                    # global batch, so scale by the process count to undo the average.
                    ctx = self.acc.no_sync(self.wrapper) if j < len(micro) - 1 else _nullcontext()
                    with ctx:
                        loss, m, nt = self._loss(
                            "train", self.train_ds, us, len(mb) / len(idx), nll_tok, len(idx),
                            lambda b: self.wrapper(b.input_ids, b.position_ids, b.gather_index, b.targets,
                                                   b.seq_index, b.n_seqs))
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
                        f"The last good state is {self.out / 'last'} (step {step - step % save_every}), "
                        f"the best model {self.out / 'best'}")
                if tc.max_grad_norm is not None:
                    gn = self.acc.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                                  tc.max_grad_norm)
                    metrics["grad_norm"] = float(gn)
                lr = self.sched.get_last_lr()[0]
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                step += 1
                dt = time.perf_counter() - t0
                t_train += dt
                units_done += len(idx)
                tokens_done += n_tok * self.world
                metrics.update(lr=lr, step_s=dt, units_per_s=len(idx) / dt)
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
        if finished and self.val_ds is None:
            self.save_model("best")  # without validation data the final model is the one kept
            best = {"loss": None, "step": step}
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
            "truncated": self.train_ds.truncated, "processes": self.world, "device": str(self.acc.device),
        }
        if finished and self.acc.is_main_process:
            _write_json(self.out / "result.json", {"best_checkpoint": str(self.out / "best"), "metrics": metrics})
        self.acc.wait_for_everyone()
        return TrainResult(self.out / "best", metrics, self.out)

    def _evaluate(self, step, best, trackers):
        if self.val_ds is None:
            return best, {}
        vm = self.validate()
        if not math.isfinite(vm["val/loss"]):
            raise TrainingDiverged(f"non-finite validation loss at step {step}: {vm}")
        vm["val/best"] = min(vm["val/loss"], best["loss"] if best["loss"] is not None else math.inf)
        trackers.log(vm, step)
        log.info("step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in vm.items()))
        if best["loss"] is None or vm["val/loss"] < best["loss"]:
            best = {"loss": vm["val/loss"], "step": step}
            self.save_model("best")
        return best, vm


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _train_stage(cfg, train_path: Path, val_path, output_dir: Path, stop_after_steps) -> TrainResult:
    done = output_dir / "result.json"
    if done.is_file():
        obj = json.loads(done.read_text())
        log.info("%s: already finished, returning its result", output_dir)
        return TrainResult(Path(obj["best_checkpoint"]), obj["metrics"], output_dir)
    return _Stage(cfg, train_path, Path(val_path) if val_path else None, output_dir, stop_after_steps).run()


__all__ = ["TrainResult", "TrainingDiverged", "plan_batches", "train"]
