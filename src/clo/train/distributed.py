"""Distributed mechanics of the trainer: how work is shared, wrapped, reduced, gathered and saved.

The loop in :mod:`clo.train.trainer` reads the same for one process, DDP and FSDP2; what differs
lives here.

- **Shares.** A global batch's units are dealt round-robin to the processes, and each share is cut
  into micro-batches by ``micro_batch_size`` units and ``max_tokens_per_micro_batch`` tokens.
  Every process then runs the SAME number of micro-batches: one that has fewer (the last, partial
  batch of an epoch may give it none) runs zero-weight filler micro-batches. DDP broadcasts
  buffers in every forward and reduces gradients in the last backward, FSDP2 gathers parameters in
  every forward and backward: a process that skipped one would leave the others waiting forever.
- **Wrapping.** ``none``/DDP go through ``accelerate.prepare``. FSDP2 is PyTorch's
  ``fully_shard`` applied here, one unit per decoder layer (the model's ``_no_split_modules``)
  and the log-prob module as the root, so that every forward (training, validation, reference)
  goes through the sharded module. accelerate's own FSDP plugin is not used for the model: on a
  CPU it silently falls back to DDP, so the sharded path could never be tested without a GPU;
  launching (``accelerate launch``) and the process group are still accelerate's. One process
  under an FSDP config has nothing to shard and goes through ``accelerate.prepare``, whose FSDP2
  plugin re-creates the parameters: what trains is read back from the optimiser
  (:func:`trained_parameters`).
- **State.** Under FSDP2 the resumable state's tensors (trainable parameters, optimiser moments,
  the best trainable tensors so far) are written and read with ``torch.distributed.checkpoint``:
  each process writes and reads only its own shards (:func:`save_shards`, :func:`load_shards`),
  and DCP re-shards on load, so the state resumes under another number of processes or without
  sharding. One process and DDP write full state dicts from process 0 (the trainer's
  ``last/state.pt``). ``best/`` is always written from full tensors.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

import torch

from clo.errors import CloError

SHARDS_PREFIX = "shards-"

log = logging.getLogger(__name__)

SHARDINGS = ("auto", "none", "fsdp2")


def micro_batches(idx: Sequence[int], rank: int, world: int, unit_tokens: Callable[[int], int], *,
                  max_units: int | None = None, max_tokens: int | None = None) -> list[tuple[list[int], bool]]:
    """This process's micro-batches of the global batch ``idx``: ``[(unit indices, real)]``.

    ``real`` is False for a filler micro-batch (the batch's first unit, to be weighted 0), added
    so that every process runs as many micro-batches as the busiest one.
    """
    per_rank = [_cut(list(idx[r::world]), unit_tokens, max_units, max_tokens) for r in range(world)]
    n = max(1, max(len(p) for p in per_rank))
    mine = [(mb, True) for mb in per_rank[rank]]
    return mine + [([idx[0]], False)] * (n - len(mine))


def _cut(share: list[int], unit_tokens, max_units, max_tokens) -> list[list[int]]:
    out: list[list[int]] = []
    cur: list[int] = []
    tokens = 0
    for u in share:
        t = unit_tokens(u)
        full = cur and ((max_units is not None and len(cur) >= max_units)
                        or (max_tokens is not None and tokens + t > max_tokens))
        if full:
            out.append(cur)
            cur, tokens = [], 0
        cur.append(u)  # a unit longer than the budget goes alone: a unit is never split
        tokens += t
    if cur:
        out.append(cur)
    return out


def resolve_sharding(requested: str, accelerator) -> str:
    """``none`` or ``fsdp2``: what was asked for, or (``auto``) what ``accelerate launch`` set up."""
    from accelerate.utils import DistributedType

    if requested not in SHARDINGS:
        raise ValueError(f"train.sharding {requested!r}: use one of {', '.join(SHARDINGS)}")
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError("DeepSpeed is not supported by clo's trainer; FSDP2 is the sharded path "
                         "(configs/accelerate/fsdp.yaml, docs/train.md)")
    if accelerator.distributed_type == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        if getattr(plugin, "fsdp_version", 1) != 2:
            raise ValueError("accelerate's FSDP config has fsdp_version 1; clo shards with FSDP2: "
                             "set fsdp_version: 2 (configs/accelerate/fsdp.yaml)")
        return "fsdp2"
    return "none" if requested == "auto" else requested


def shard_fsdp2(wrapper: torch.nn.Module, model: torch.nn.Module, compute_dtype: torch.dtype,
                device: torch.device, world: int) -> torch.nn.Module:
    """Apply FSDP2 in place: each decoder layer a unit, ``wrapper`` the root; returns ``wrapper``.

    Parameters keep their own dtype in the shards (fp32 master weights for the trainable ones);
    they are gathered in ``compute_dtype`` and gradients are reduced in fp32.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from clo.train.logprobs import base_model

    names = set(getattr(base_model(model), "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"FSDP2: {type(base_model(model)).__name__} names no decoder layer class "
                         "(_no_split_modules); cannot shard it layer by layer")
    mesh = init_device_mesh(device.type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(wrapper, mesh=mesh, mp_policy=mp)
    log.info("FSDP2: %d decoder layers (%s) sharded over %d processes", len(layers), ", ".join(sorted(names)), world)
    return wrapper


def sync_gradients(wrapper, sharding: str, accelerator, last: bool):
    """Context for one micro-batch's backward: gradients are reduced only in the last one."""
    if last:
        return contextlib.nullcontext()
    if sharding == "fsdp2":
        return _fsdp_no_sync(wrapper)
    return accelerator.no_sync(wrapper)


@contextlib.contextmanager
def _fsdp_no_sync(wrapper):
    wrapper.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        wrapper.set_requires_gradient_sync(True)


def all_reduce_sum(tensor: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_true(flag: bool, device, world: int) -> bool:
    """Whether ``flag`` holds on every process (e.g. every process found the cache)."""
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    return float(all_reduce_sum(t, world)) == 0.0


class UnsharedDirectory(CloError, ValueError):
    """The output directory is not the same directory for every process (nodes without a shared filesystem)."""


def check_shared_directory(path, rank: int, world: int, device) -> None:
    """Refuse to start unless every process sees the files process 0 writes in ``path``.

    Resumption, ``run.json`` and ``result.json`` are read by every process from the output
    directory; on nodes without a shared filesystem the others would restart at step 0 or wait
    forever for a state only node 0 has. Collective: every process calls it.
    """
    if world <= 1:
        return
    import socket
    import uuid
    from pathlib import Path

    import torch.distributed as tdist

    path = Path(path)
    token = [uuid.uuid4().hex if rank == 0 else None]
    tdist.broadcast_object_list(token, src=0)
    probe = path / f".clo-shared-check-{token[0]}"
    if rank == 0:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text(token[0], encoding="utf-8")
    tdist.barrier()
    try:
        seen = probe.read_text(encoding="utf-8") == token[0]
    except OSError:
        seen = False
    hosts = [None] * world
    tdist.all_gather_object(hosts, (socket.gethostname(), seen))
    if rank == 0:
        probe.unlink(missing_ok=True)
    blind = [f"process {r} on {h}" for r, (h, ok) in enumerate(hosts) if not ok]
    if blind:
        raise UnsharedDirectory(f"output_dir {path} is not shared by all processes: {', '.join(blind)} cannot see "
                                f"the files process 0 writes there; put output_dir on a filesystem every node mounts")


def trained_parameters(model: torch.nn.Module, optimizer) -> list[torch.Tensor]:
    """The tensors ``optimizer`` steps, checked to be exactly ``model``'s trainable parameters.

    Read after ``accelerate.prepare``: its FSDP plugin re-creates every parameter as a sharded
    DTensor and re-points the optimiser at them, so a list collected before would hold stale
    tensors that never receive a gradient (clipping would see none and clip nothing).
    """
    stepped = [p for group in optimizer.param_groups for p in group["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    ids = {id(p) for p in stepped}
    if len(ids) != len(stepped) or ids != {id(p) for p in trainable}:
        raise RuntimeError(f"the optimiser steps {len(ids)} tensors but the model has {len(trainable)} trainable "
                           "parameters, not the same ones: the model was re-wrapped after the optimiser was made")
    return stepped


def grad_norm_clip(params: list[torch.Tensor], max_norm: float) -> float:
    """Clip to ``max_norm`` over the GLOBAL gradient norm; returns that norm.

    With FSDP2 the gradients are shards (DTensors): ``clip_grad_norm_`` reduces their norms over
    processes, so the norm and the scale are those of the whole model, as with one process.
    """
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Full copies (CPU) of the trainable tensors; collective under FSDP2 (every process calls)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_options(cpu_offload=True, ignore_frozen_params=True))
    return {k: v.detach().clone() for k, v in sd.items()}


def full_model_state(model) -> dict[str, torch.Tensor]:
    """The whole model's full state dict on CPU (collective under FSDP2)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def load_trainable(model, state: dict[str, torch.Tensor]) -> None:
    """Set the trainable tensors from full copies (each process holds them; FSDP2 re-shards)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options(strict=False))


def optimizer_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_optimizer_state(model, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options())


def _sharded_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=False, ignore_frozen_params=True, **kw)


def _cpu_copy(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy of ``t``; a DTensor stays a DTensor (same mesh, placements, global shape) whose
    local shard is on the CPU, so that a kept copy costs no accelerator memory."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        # DTensor's constructor with the original's spec: ``DTensor.from_local`` would move the
        # shard back to the mesh's device (the GPU).
        return DTensor(t.to_local().detach().to("cpu", copy=True), t._spec, requires_grad=False)
    return t.detach().to("cpu", copy=True)


def trainable_shards(model) -> dict[str, torch.Tensor]:
    """This process's shards of the trainable tensors, copied to the CPU (no collective)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return {k: _cpu_copy(v) for k, v in get_model_state_dict(model, options=_sharded_options()).items()}


def full_tensors(state: dict[str, torch.Tensor] | None, device: torch.device) -> dict[str, torch.Tensor] | None:
    """``state`` with every DTensor gathered into a full CPU tensor: collective when ``state`` holds
    DTensors (every process calls, with the same keys); other tensors are returned as they are."""
    from torch.distributed.tensor import DTensor

    if not state or not any(isinstance(v, DTensor) for v in state.values()):
        return state
    out = {}
    for k, v in state.items():
        if isinstance(v, DTensor):  # the shard back on the mesh's device for the gather
            v = DTensor.from_local(v.to_local().to(device), v.device_mesh, v.placements, shape=v.shape,
                                   stride=v.stride(), run_check=False).full_tensor().cpu()
        out[k] = v
    return out


class ShardsError(CloError, ValueError):
    """A sharded state directory that is not what clo writes."""


# What a DCP ``.metadata`` pickle may name: DCP's own metadata records and the torch values they
# hold. Anything else (a pickle placed there to run code) is refused before it is built.
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
      ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
      ("pathlib", "PurePosixPath"), ("collections", "OrderedDict")}


def _metadata_unpickler(f, path):
    import pickle

    class Restricted(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in _METADATA_GLOBALS:
                return super().find_class(module, name)
            if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout)):
                return getattr(torch, name)
            raise ShardsError(f"{path}: names {module}.{name}, which a checkpoint's metadata never holds; "
                              "refused, not unpickled")

    return Restricted(f)


def _safe_reader(path):
    """DCP's file reader, except that ``.metadata`` (a pickle) is read by an unpickler that builds
    only DCP's metadata records: a run directory is data, never code."""
    import pickle

    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs) -> Metadata:
            mpath = self._get_metadata_path(kwargs.get("rank"))
            try:
                with self.fs.create_stream(mpath, "rb") as f:
                    metadata = _metadata_unpickler(f, mpath).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
                if isinstance(e, ShardsError):
                    raise
                raise ShardsError(f"{mpath}: not a checkpoint's metadata ({type(e).__name__}: {e})") from None
            if not isinstance(metadata, Metadata):
                raise ShardsError(f"{mpath}: not a checkpoint's metadata (a {type(metadata).__name__})")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)


def _tensors_only_planner():
    """DCP's load planner, refusing non-tensor items: DCP would ``torch.load`` them with
    ``weights_only=False``, and clo's shards hold tensors only (the rest is in ``state.pt``)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class TensorsOnly(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):
            raise ShardsError(f"checkpoint item {read_item.dest_index.fqn!r} is not a tensor; clo's shards "
                              "hold tensors only")

    return TensorsOnly()


def save_shards(path, model, optimizer, best: dict | None) -> list[dict]:
    """Write this process's shards of the trainable tensors, the optimiser state and ``best``
    (from :func:`trainable_shards`) under ``path`` with ``torch.distributed.checkpoint``
    (collective: every process calls). Returns the optimiser's param groups (hyper-parameters and
    parameter names, no tensors), which go with the small state file instead."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer, options=_sharded_options())
    tensors = {"model": msd, "optimizer": osd["state"]}
    if best is not None:
        tensors["best"] = best
    dcp.save(tensors, storage_writer=_writer(path))
    return osd["param_groups"]


def _writer(path):
    from torch.distributed.checkpoint import FileSystemWriter

    return FileSystemWriter(path, single_file_per_rank=True)


def load_shards(path, model, optimizer, param_groups: list[dict], has_best: bool) -> dict | None:
    """Set the model's trainable tensors and the optimiser state from :func:`save_shards`' files;
    returns the best trainable tensors (shaped as :func:`trainable_shards`) or None. Each process
    reads only the parts of the files that its shards cover (collective when a process group runs)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, optimizer, options=_sharded_options())
    target = {"model": msd, "optimizer": osd["state"]}
    if has_best:
        target["best"] = {k: _cpu_copy(v) for k, v in msd.items()}
    reader = _safe_reader(path)
    reader.read_metadata()  # refused here, by name, before DCP would wrap the error in its own
    try:
        dcp.load(target, storage_reader=reader, planner=_tensors_only_planner())
    except Exception as e:  # DCP wraps what failed on any process in a CheckpointException
        failures = getattr(e, "failures", None) or {}
        first = next((f[0] if isinstance(f, tuple) else f for f in failures.values()), e)
        if isinstance(first, ShardsError):
            raise first from None
        raise ShardsError(f"{path}: cannot read the sharded state ({type(first).__name__}: "
                          f"{str(first).splitlines()[0] if str(first) else ''})") from None
    set_state_dict(model, optimizer, model_state_dict=target["model"],
                   optim_state_dict={"state": target["optimizer"], "param_groups": param_groups},
                   options=_sharded_options(strict=False))
    return target.get("best")


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory since the last reset: the device's allocator on CUDA, the process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20  # bytes on macOS, KiB on Linux


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
