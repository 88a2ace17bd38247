"""Checkpoints of FSDP runs through torch.distributed.checkpoint (DCP): `get_state_dict` /
`set_state_dict` of the model and the optimizer, each rank writing its own shards into
`checkpoint-<step>/shards/`, beside what r1core.trainers.checkpoint writes for every run (the
consolidated `model.safetensors` that `from_pretrained` and `r1core eval` read, config.json, the
tokenizer, the JSON trainer state and the RNGs).

Atomic as the other checkpoints: every rank writes into one hidden temporary folder (named by
rank 0), rank 0 adds its files and renames the folder to `checkpoint-<step>` only after DCP's
save returned on every rank, so a run killed mid-save leaves no checkpoint that looks complete.

Loading goes through DCP's resharding: a checkpoint written by N processes loads into a run of M
(FSDP or not, one process without a process group included), each rank reading the pieces of its
own shards.
"""

from __future__ import annotations

import os

import torch

from r1core.trainers import distributed as dist
from r1core.trainers.checkpoint import SHARDS_DIR, TENSOR_FILE, checkpoint_tmp_dir, save_checkpoint, set_rng_state


def save_sharded(output_dir: str, step: int, model: torch.nn.Module, optimizer, scheduler=None, state: dict | None = None,
                 save_total_limit: int | None = None, tokenizer=None) -> str | None:
    """Every rank calls it; writes <output_dir>/checkpoint-<step> and returns its path on rank 0
    (None elsewhere)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    tmp_dir = dist.broadcast_object(checkpoint_tmp_dir(output_dir, step) if dist.is_main() else None)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=os.path.join(tmp_dir, SHARDS_DIR))
    # the consolidated weights: gathered on every rank, kept on rank 0 only (cpu_offload)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    path = None
    if dist.is_main():
        path = save_checkpoint(output_dir, step, model, None, scheduler, {**(state or {}), "sharded": dist.world()[1]},
                               save_total_limit, tokenizer=tokenizer, tmp_dir=tmp_dir, weights=full)
    dist.barrier()
    return path


def load_sharded(path: str, js: dict, model: torch.nn.Module, optimizer, scheduler=None, restore_rng: bool = True) -> None:
    """Loads a `save_sharded` checkpoint (js: its read_state) into model and optimizer in place,
    resharded to this run's ranks."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=os.path.join(path, SHARDS_DIR))
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    if scheduler is not None and "scheduler" in js:
        scheduler.load_state_dict(js["scheduler"])
    if restore_rng:
        set_rng_state(js["rng"], load_file(os.path.join(path, TENSOR_FILE)))


__all__ = ["load_sharded", "save_sharded"]
