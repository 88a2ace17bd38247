"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for the trainers: each rank holds 1/world of every
parameter, gradient and AdamW moment; a layer's full parameters exist only while it runs.

`shard(root, model, bf16)` shards each decoder layer of `model` (the classes transformers names in
`_no_split_modules`) and then `root`, the trainer's loss module that holds the model: the fused
losses read the LM head outside the decoder's forward, and the root's forward is what unshards the
embeddings, the final norm and the (tied) head for it. With bf16, `MixedPrecisionPolicy`: bf16
parameters in the forward and backward, gradients reduced and AdamW stepped in float32.

`full_weights(root)` is the rollout's view: every parameter unsharded (one all-gather per module,
on every rank together) until the block ends, with no resharding after each layer's forward; in
float32 with bf16 too (the shards are float32, and so are the engine's KV cache and sampler). The
engine runs a different number of forwards on each rank (its sequences end when they end), so no
collective may happen inside a generation; the block's start and end are the only ones.

PyTorch issue 162338: FSDP2 over gloo was reported to sum gradients where it should average them.
`shard` checks what this build's gloo does with the average it asks for (one reduce-scatter of
known numbers, once per process group); where it sums, FSDP is told to sum and divide by the
world size itself (`set_force_sum_reduction_for_comms`), so the gradients are the average either
way (tests/test_fsdp.py compares them with one process's).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.distributed as tdist

from r1core.trainers import distributed as dist


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: the classes transformers keeps whole (`_no_split_modules`),
    else the modules of `model.model.layers`."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        base = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
        layers = list(getattr(base, "layers", ()))
    if not layers:
        raise ValueError(f"fsdp=True: found no decoder layers to shard in {type(model).__name__} (no _no_split_modules, "
                         f"no .model.layers)")
    return layers


def fsdp_modules(root: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in root.modules() if isinstance(m, FSDPModule)]


def is_sharded(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@functools.lru_cache(maxsize=None)
def _gloo_average_sums(group_name: str) -> bool:
    """True when a reduce-scatter with ReduceOp.AVG over gloo sums instead (PyTorch issue 162338)."""
    world = tdist.get_world_size()
    ones = torch.ones(world, dtype=torch.float32)
    out = torch.empty(1, dtype=torch.float32)
    scatter = getattr(tdist, "reduce_scatter_single", None) or tdist.reduce_scatter_tensor  # the older name before 2.10
    scatter(out, ones, op=tdist.ReduceOp.AVG)
    if out.item() == 1.0:
        return False
    if out.item() == float(world):
        return True
    raise RuntimeError(f"a gloo reduce-scatter of ones with ReduceOp.AVG over {world} processes gave {out.item()}, "
                       f"neither their average (1) nor their sum ({world})")


def average_sums() -> bool:
    """Whether this process group's FSDP gradient average needs the correction (gloo only)."""
    if not dist.is_initialized() or tdist.get_backend() != "gloo" or tdist.get_world_size() == 1:
        return False
    return _gloo_average_sums(str(tdist.group.WORLD))


def shard(root: torch.nn.Module, model: torch.nn.Module, bf16: bool = False) -> torch.nn.Module:
    """fully_shard each decoder layer of `model`, then `root` (which holds `model`); returns root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_initialized():
        raise ValueError("fsdp=True needs a process group: start the run with torchrun (one process: "
                         "torchrun --nproc-per-node 1), or set fsdp=False")
    mesh = init_device_mesh(dist.device_for_rank().type, (tdist.get_world_size(),))
    # inputs are never cast: the root's float tensors are log-probs and advantages the loss reads in
    # float32, and a layer's input is bf16 already (the bf16 embedding's output); a rollout's layers
    # run on the float32 weights (full_weights)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(root, mesh=mesh, mp_policy=mp)
    root._r1core_bf16_params = bf16
    root._get_fsdp_state()._lazy_init()  # root is the root, whichever module runs forward first (a rollout's layers)
    if average_sums():
        for m in fsdp_modules(root):
            m.set_force_sum_reduction_for_comms(True)  # sum, then FSDP divides by the world size
    return root


@contextlib.contextmanager
def full_weights(root: torch.nn.Module | None):
    """Every parameter under `root` unsharded for the block (nothing when root is not sharded)."""
    if root is None or not is_sharded(root):
        yield
        return
    mods = fsdp_modules(root)
    # bf16 parameters (MixedPrecisionPolicy): the rollout reads float32 ones, gathered from the
    # float32 shards, as without FSDP (the engine's KV cache and sampler are float32)
    full = _float32_weights(root) if getattr(root, "_r1core_bf16_params", False) else None
    for m in mods:
        m.unshard()
    inner = [m for m in mods if m is not root]
    for m in inner:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        for (module, name), tensor in (full or {}).items():
            module._parameters[name] = torch.nn.Parameter(tensor, requires_grad=False)  # reshard() puts the shard back
        with torch.no_grad():
            yield
    finally:
        for m in inner:
            m.set_reshard_after_forward(True, recurse=False)
        for m in mods:
            m.reshard()


def _float32_weights(root: torch.nn.Module) -> dict:
    """(module, name) -> the whole float32 tensor of each sharded parameter (one all-gather each, in
    the modules' order on every rank; a tied parameter gathered once)."""
    out, gathered = {}, {}
    with torch.no_grad():
        for module in root.modules():
            for name, p in module.named_parameters(recurse=False):
                if hasattr(p, "full_tensor"):
                    if id(p) not in gathered:
                        gathered[id(p)] = p.full_tensor()
                    out[(module, name)] = gathered[id(p)]
    return out


def retarget_optimizer(optimizer: torch.optim.Optimizer, before: dict[str, torch.nn.Parameter],
                       after: dict[str, torch.nn.Parameter]) -> None:
    """Point an optimizer built on the parameters `before` (name -> parameter) at their sharded
    replacements `after`; it must not have stepped yet (its state would be the old shapes')."""
    if optimizer.state:
        raise ValueError("fsdp=True: the optimizer has stepped before the model was sharded")
    by_id = {id(p): after[n] for n, p in before.items() if n in after}
    for group in optimizer.param_groups:
        group["params"] = [by_id.get(id(p), p) for p in group["params"]]


__all__ = ["average_sums", "decoder_layers", "fsdp_modules", "full_weights", "is_sharded", "retarget_optimizer", "shard"]
