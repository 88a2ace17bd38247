"""Several processes under torchrun: gloo on the CPU, nccl on GPUs, one process per device.

The trainers stay correct with or without it: `world()` is (rank 0, size 1) when no process group
exists. Prompts are dealt to ranks whole, so a prompt's G samples (its group) stay on one rank and
group advantages need no communication; only token counts for the dapo normaliser, the logged
metrics and the gradients (DDP, or FSDP2: r1core.trainers.fsdp) cross ranks.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def under_torchrun() -> bool:
    """The environment describes a process group (torchrun, or a launcher that sets the same variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_from_env(backend: str | None = None, single: bool = False) -> bool:
    """Joins the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR...); False when
    the environment names no group, or the world has one process and `single` is False (FSDP asks
    for a group of one: its checkpoints and sharding are the same code at any size)."""
    if dist.is_available() and dist.is_initialized():
        return True
    if not under_torchrun() or (int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not single):
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return True


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> tuple[int, int]:
    """(rank, world size)."""
    if is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def device_for_rank() -> torch.device:
    if torch.cuda.is_available() and is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy on t's device; the input is left alone). nccl reduces only CUDA
    tensors, so a CPU tensor (logged metrics) travels through this rank's device."""
    return _all_reduce(t, dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Elementwise max over ranks, as all_reduce_sum."""
    return _all_reduce(t, dist.ReduceOp.MAX)


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    t = t.detach().clone()
    if is_initialized():
        dev = device_for_rank()
        if t.device != dev:
            moved = t.to(dev)
            dist.all_reduce(moved, op=op)
            return moved.to(t.device)
        dist.all_reduce(t, op=op)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(t) / world()[1]


def all_gather_object(obj) -> list:
    if not is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def mode(fsdp: bool = False) -> str:
    """'fsdp', 'ddp' (a process group of several) or 'single'."""
    if fsdp:
        return "fsdp"
    return "ddp" if world()[1] > 1 else "single"


def _memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def describe(model: torch.nn.Module, fsdp: bool = False) -> str:
    """One line for the start of a run: world size, mode, and per rank the parameter bytes it holds
    (a shard of each under FSDP) and the process's memory (peak RSS on the CPU, peak allocated on a
    GPU). Every rank must call it (the numbers are gathered); rank 0 prints it."""
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size() for p in model.parameters())
    per_rank = all_gather_object((local, _memory_bytes(device_for_rank())))
    mib = 2**20
    ranks = ", ".join(f"rank {r}: parameters {p / mib:.1f} MiB, process {m / mib:.0f} MiB" for r, (p, m) in enumerate(per_rank))
    return f"world size {world()[1]}, mode {mode(fsdp)}; {ranks}"


def wrap_ddp(module: torch.nn.Module) -> torch.nn.Module:
    """DDP around module when a process group exists, else the module itself."""
    if not is_initialized() or dist.get_world_size() == 1:
        return module
    dev = device_for_rank()
    kwargs = {"device_ids": [dev.index]} if dev.type == "cuda" else {}
    return torch.nn.parallel.DistributedDataParallel(module, **kwargs)
