"""Checkpoints: the model as safetensors, a JSON trainer state, and the optimizer's and RNGs'
tensors in a second safetensors file, written atomically.

    <output_dir>/checkpoint-<step>/
        model.safetensors           weights (tied weights stored once, safetensors.torch.save_model)
        trainer_state.json          step, data position, scheduler, optimizer hyper-parameters and
                                    per-parameter scalars, Python/NumPy RNG, config, anything else
        trainer_state.safetensors   optimizer moment tensors and torch RNG states
        config.json, tokenizer*     the model's config and its tokenizer (when the trainer has them),
                                    so `from_pretrained` and `r1core eval` load a checkpoint as they
                                    load a saved model
        shards/                     FSDP runs only (r1core.trainers.sharded_checkpoint): the model and
                                    the optimizer through torch.distributed.checkpoint, each rank its
                                    shards; model.safetensors is then their consolidated weights and
                                    trainer_state.safetensors holds the RNGs only

Each file is written under a temporary name and moved into place with os.replace, inside a
temporary directory that is renamed to `checkpoint-<step>` only when every file is complete: a
process killed mid-save leaves the previous checkpoints intact and no half-written one that
`latest_checkpoint` could pick.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.json"
TENSOR_FILE = "trainer_state.safetensors"
SHARDS_DIR = "shards"  # FSDP runs: the model and optimizer as torch.distributed.checkpoint wrote them
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _atomic_write(path: str, write) -> None:
    d = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def rng_state() -> tuple[dict, dict]:
    """(JSON part, tensor part) of every RNG a run draws from."""
    py = random.getstate()
    npst = np.random.get_state()
    js = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return js, tensors


def set_rng_state(js: dict, tensors: dict) -> None:
    v, state, gauss = js["python"]
    random.setstate((v, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if states:
            torch.cuda.set_rng_state_all(states)


def _split_optimizer(sd: dict) -> tuple[dict, dict]:
    js = {"param_groups": sd["param_groups"], "state": {}}
    tensors = {}
    for idx, st in sd["state"].items():
        entry = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                entry[k] = v
        js["state"][str(idx)] = entry
    return js, tensors


def _join_optimizer(js: dict, tensors: dict) -> dict:
    state: dict = {}
    for idx, entry in js["state"].items():
        state[int(idx)] = dict(entry)
    for key, t in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = t
    groups = []
    for g in js["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def check_writable_dir(path: str, what: str) -> None:
    """ValueError naming `what` unless `path` is, or can be made, a folder this process can write
    into: checked before a run starts, so a bad path costs no training."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-check-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"{what}: cannot write into {str(path)!r} ({e.strerror or e}); expected a folder, or a path "
                         f"where one can be made") from None


def _remove_leftovers(output_dir: str) -> None:
    """What a process killed while saving left: half-written folders (never picked by
    list_checkpoints) are removed so they do not pile up, a checkpoint moved aside to be replaced
    goes back; one process writes an output_dir's checkpoints."""
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith(".checkpoint-") and ".tmp-" in name:
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith("checkpoint-") and ".old-" in name:  # killed while re-saving a step
            final = path.split(".old-")[0]
            if os.path.exists(final):
                shutil.rmtree(path, ignore_errors=True)
            else:  # killed between the two renames: the old one is the complete one
                os.rename(path, final)


def checkpoint_tmp_dir(output_dir: str, step: int) -> str:
    """A fresh hidden folder in output_dir for checkpoint-<step> to be written into (what killed saves
    left there is cleared first)."""
    os.makedirs(output_dir, exist_ok=True)
    _remove_leftovers(output_dir)
    return tempfile.mkdtemp(dir=output_dir, prefix=f".checkpoint-{step}.tmp-")


def tied_duplicates(model: torch.nn.Module) -> set[str]:
    """State-dict names of parameters that are another name's tensor (tied embeddings): a
    consolidated state dict stores each tensor once, under its first name, as save_model does."""
    first = {n for n, _ in model.named_parameters()}
    return {n for n, _ in model.named_parameters(remove_duplicate=False)} - first


def save_checkpoint(output_dir: str, step: int, model: torch.nn.Module, optimizer=None, scheduler=None,
                    state: dict | None = None, save_total_limit: int | None = None, tokenizer=None,
                    tmp_dir: str | None = None, weights: dict | None = None) -> str:
    """Writes <output_dir>/checkpoint-<step> atomically and returns its path; with the model's
    config.json and `tokenizer`'s files beside the weights, so the folder loads as a model.
    tmp_dir: a `checkpoint_tmp_dir` already holding files of the checkpoint (DCP's shards);
    weights: the model's full state dict to write instead of reading model's own tensors."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp_dir = tmp_dir or checkpoint_tmp_dir(output_dir, step)
    try:
        if weights is None:
            _atomic_write(os.path.join(tmp_dir, MODEL_FILE), lambda p: save_model(unwrap(model), p))
        else:
            drop = tied_duplicates(unwrap(model))
            kept = {k: v.contiguous() for k, v in weights.items() if k not in drop}
            _atomic_write(os.path.join(tmp_dir, MODEL_FILE), lambda p: save_file(kept, p, metadata={"format": "pt"}))
        config = getattr(unwrap(model), "config", None)
        if hasattr(config, "to_json_file"):
            config.to_json_file(os.path.join(tmp_dir, "config.json"))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp_dir)
        rng_js, tensors = rng_state()
        js = {"step": step, "rng": rng_js, **(state or {})}
        if optimizer is not None:
            opt_js, opt_tensors = _split_optimizer(optimizer.state_dict())
            js["optimizer"] = opt_js
            tensors.update(opt_tensors)
        if scheduler is not None:
            js["scheduler"] = scheduler.state_dict()
        _atomic_write(os.path.join(tmp_dir, TENSOR_FILE), lambda p: save_file(tensors, p))
        # the JSON is written last: the sizes it records let a load tell a truncated file
        js["file_sizes"] = {n: os.path.getsize(os.path.join(tmp_dir, n)) for n in (MODEL_FILE, TENSOR_FILE)}

        def write_json(p):
            with open(p, "w") as f:
                json.dump(js, f, indent=1)

        _atomic_write(os.path.join(tmp_dir, STATE_FILE), write_json)
        if os.path.exists(final):  # re-saving a step: swap, then drop the old one
            old = final + f".old-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp_dir, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp_dir, final)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    if save_total_limit is not None:
        for old_step, path in list_checkpoints(output_dir)[:-save_total_limit]:
            shutil.rmtree(path, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints (step, path), oldest first."""
    if not os.path.isdir(output_dir):
        return []
    out = []
    for name in os.listdir(output_dir):
        m = _CKPT_RE.match(name)
        path = os.path.join(output_dir, name)
        if m and os.path.exists(os.path.join(path, STATE_FILE)):
            out.append((int(m.group(1)), path))
    return sorted(out)


def latest_checkpoint(output_dir: str) -> str | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


class CorruptCheckpoint(ValueError):
    """A checkpoint file that is missing, truncated or unreadable; the message names the file."""


def _corrupt(path: str, name: str, why: str) -> CorruptCheckpoint:
    return CorruptCheckpoint(f"checkpoint file {os.path.join(path, name)!r} is {why}; resume from an earlier "
                             f"checkpoint (resume_from_checkpoint=True falls back to the last complete one)")


def _check_safetensors(path: str, name: str, size: int | None) -> None:
    """The file's header parses and its data ends where the header says (cheap: reads the header
    only); `size` is the size the checkpoint's JSON recorded, when it did."""
    import struct

    file = os.path.join(path, name)
    if not os.path.exists(file):
        raise _corrupt(path, name, "missing")
    actual = os.path.getsize(file)
    if size is not None and actual != size:
        raise _corrupt(path, name, f"truncated or altered ({actual} bytes, {size} written)")
    try:
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > actual - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError) as e:
        raise _corrupt(path, name, f"not a readable safetensors file ({type(e).__name__}: {e})") from None
    if 8 + n + end != actual:
        raise _corrupt(path, name, f"truncated ({actual} bytes, its header describes {8 + n + end})")


def read_state(path: str) -> dict:
    """The checkpoint's JSON state, after checking that every file of it is whole (before anything is
    loaded, so a failed check leaves the model and optimizer untouched); `CorruptCheckpoint` naming
    the file otherwise."""
    if not os.path.isdir(path) or not os.path.exists(os.path.join(path, STATE_FILE)):
        raise ValueError(f"resume_from_checkpoint: {path!r} is not a checkpoint (no {STATE_FILE})")
    try:
        with open(os.path.join(path, STATE_FILE)) as f:
            js = json.load(f)
        if not isinstance(js, dict):
            raise ValueError(f"expected a JSON object, got {type(js).__name__}")
    except (ValueError, UnicodeDecodeError) as e:
        raise _corrupt(path, STATE_FILE, f"truncated or not JSON ({e})") from None
    sizes = js.get("file_sizes", {})
    for name in (MODEL_FILE, TENSOR_FILE):
        _check_safetensors(path, name, sizes.get(name))
    if js.get("sharded") and not os.path.exists(os.path.join(path, SHARDS_DIR, ".metadata")):
        raise _corrupt(path, os.path.join(SHARDS_DIR, ".metadata"), "missing (the sharded model and optimizer)")
    return js


def load_checkpoint(path: str, model: torch.nn.Module, optimizer=None, scheduler=None, restore_rng: bool = True) -> dict:
    """Loads weights (and optimizer, scheduler, RNG states) in place; returns the JSON state.
    Every file is checked first (`read_state`): a truncated or corrupt one is a `CorruptCheckpoint`
    naming it, raised before anything changed."""
    js = read_state(path)
    missing, unexpected = load_model(unwrap(model), os.path.join(path, MODEL_FILE), strict=False)
    if unexpected or missing:
        raise ValueError(f"checkpoint {path!r} does not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    tensors = load_file(os.path.join(path, TENSOR_FILE))
    if optimizer is not None and "optimizer" in js:
        optimizer.load_state_dict(_join_optimizer(js["optimizer"], tensors))
    if scheduler is not None and "scheduler" in js:
        scheduler.load_state_dict(js["scheduler"])
    if restore_rng:
        set_rng_state(js["rng"], tensors)
    return js
