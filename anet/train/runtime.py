"""Where and how training runs: device, precision, seeding, determinism, DDP.

None of this changes the maths; it only decides the device, the number format and how ranks talk::

    from anet.train.runtime import setup_runtime, autocast, wrap_ddp
    ctx = setup_runtime(cfg.runtime)          # seeds, threads, determinism, torchrun process group
    model = model.to(ctx.device)
    with autocast(ctx.device, cfg.runtime.precision):
        out = model(images)

Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) :func:`setup_runtime` joins the process
group (gloo on CPU, nccl on CUDA) and each rank trains on its own share of the batches.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from anet.config import RuntimeCfg
from anet.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeContext:
    """The resolved runtime: device plus this process's place among the DDP ranks."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the rank that writes checkpoints and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when gradients are averaged across several processes."""
        return self.world_size > 1


def resolve_device(runtime: RuntimeCfg, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a user error."""
    if runtime.device == "cpu" or (runtime.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("runtime.device=cuda but no CUDA device is visible; use runtime.device=auto or cpu")
    return torch.device("cuda", local_rank)


def check_precision(device: torch.device, precision: str) -> None:
    """fp16 needs a GradScaler and CUDA; on CPU bf16 is the fast format (AVX512_BF16)."""
    if precision == "fp16" and device.type != "cuda":
        raise UserError("runtime.precision=fp16 needs a CUDA device; on CPU use runtime.precision=bf16 or fp32")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Bit-reproducible kernels (slower); also what resume equivalence relies on."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    # filling every new tensor with NaN (the default under deterministic mode) costs ~10 % of a CPU step
    # and does not change results
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def setup_runtime(runtime: RuntimeCfg) -> RuntimeContext:
    """Threads, determinism, process group (under torchrun) and seeds for this process.

    Each rank is seeded with ``runtime.seed + rank`` so augmentations differ between ranks.
    """
    if runtime.num_threads > 0:
        torch.set_num_threads(runtime.num_threads)
    set_deterministic(runtime.deterministic)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(runtime, local_rank)
    check_precision(device, runtime.precision)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    seed_everything(runtime.seed + rank)
    return RuntimeContext(device=device, rank=rank, world_size=world_size, local_rank=local_rank)


def current_context(device: torch.device) -> RuntimeContext:
    """The context of an already set-up process (rank/world from the process group, if any)."""
    if dist.is_available() and dist.is_initialized():
        local_rank = device.index if device.type == "cuda" and device.index is not None else 0
        return RuntimeContext(device, dist.get_rank(), dist.get_world_size(), local_rank)
    return RuntimeContext(device)


def shutdown_distributed() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CPU/CUDA, fp16 autocast on CUDA, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler that is only active for fp16 (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def wrap_ddp(model: nn.Module, ctx: RuntimeContext, sync_bn: bool = False) -> nn.Module:
    """DistributedDataParallel when running under torchrun, else the model itself.

    ``find_unused_parameters`` is on because a batch without attribute labels, or stage two's frozen
    f branch, can leave trainable parameters without a gradient in some steps. ``sync_bn``
    (``runtime.sync_bn``) swaps every BatchNorm for SyncBatchNorm in place (same parameters and
    buffers, so the optimiser and the checkpoint keys are unchanged): train-mode BN then normalises
    with the global batch's statistics. torch's SyncBatchNorm needs CUDA; on CPU ranks it is skipped
    with a warning.
    """
    if not ctx.distributed:
        return model
    if sync_bn and ctx.device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif sync_bn:
        log.warning("runtime.sync_bn=true: SyncBatchNorm needs CUDA; these %s ranks keep per-rank BN statistics",
                    ctx.device.type)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sync_buffers(model: nn.Module, ctx: RuntimeContext) -> None:
    """Average float buffers (BN running stats) over ranks so every rank ends with equal weights."""
    if not ctx.distributed:
        return
    for buffer in unwrap(model).buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(ctx.world_size)
        else:
            dist.broadcast(buffer, src=0)


def all_reduce_mean(values: dict[str, float], ctx: RuntimeContext) -> dict[str, float]:
    """Mean of per-rank scalars (epoch loss terms) over all ranks; identity on one process."""
    if not ctx.distributed or not values:
        return values
    names = sorted(values)
    packed = torch.tensor([values[n] for n in names], dtype=torch.float64, device=ctx.device)  # n_terms
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return {n: float(v) / ctx.world_size for n, v in zip(names, packed.tolist(), strict=True)}


def all_true(flag: bool, ctx: RuntimeContext) -> bool:
    """True only if ``flag`` is True on every rank (keeps ranks in lock-step on errors)."""
    if not ctx.distributed:
        return flag
    packed = torch.tensor([1 if flag else 0], dtype=torch.int32, device=ctx.device)
    dist.all_reduce(packed, op=dist.ReduceOp.MIN)
    return bool(packed.item())


def broadcast_flag(flag: bool, ctx: RuntimeContext) -> bool:
    """Rank 0's decision (e.g. "pruned, stop") on every rank."""
    if not ctx.distributed:
        return flag
    packed = torch.tensor([1 if flag else 0], dtype=torch.int32, device=ctx.device)
    dist.broadcast(packed, src=0)
    return bool(packed.item())


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """All random states as weights_only-loadable values (tensors, lists, ints, strings)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"]), py_state["gauss"]))
    for name, g in (generators or {}).items():
        if name in state["generators"]:
            g.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def main_first(ctx: RuntimeContext) -> Iterator[None]:
    """Let rank 0 do a one-off job (dataset generation, cache preparation) before the others."""
    if ctx.distributed and not ctx.is_main:
        dist.barrier()
    yield
    if ctx.distributed and ctx.is_main:
        dist.barrier()


def gather_objects(obj: Any, ctx: RuntimeContext) -> list[Any]:
    """``[obj from rank 0, obj from rank 1, ...]`` (a one-element list on one process)."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered
