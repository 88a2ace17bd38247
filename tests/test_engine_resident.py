"""The engine's steps for a search policy (resident sequences: `add_resident`, `fork_resident`,
`release_resident`, `forward`), and the layering they allow: the policies (branches, beam search,
the step-wise searches) reach the engine, its scheduler and its block manager only through public
names."""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch
from _engine_models import random_prompts, tiny_model

from r1core.engine import BlockManager, Engine, SamplingParams, Scheduler

ROOT = pathlib.Path(__file__).resolve().parents[1]


def last_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


def test_forward_gives_each_resident_sequences_logits_in_order():
    model = tiny_model("qwen2")
    engine = Engine(model, block_size=4, num_blocks=64, max_num_batched_tokens=8)  # prompts over several batches
    bm = engine.block_manager
    prompts = random_prompts([11, 3, 7])
    seqs = [engine.add_resident(p) for p in prompts]
    logits = engine.forward(seqs)
    torch.testing.assert_close(logits, torch.stack([last_logits(model, p) for p in prompts]), atol=1e-4, rtol=1e-4)
    assert all(s.num_computed_tokens == s.num_tokens for s in seqs) and not engine.scheduler.has_unfinished()
    # a fork shares every block; the next token of each sequence is one decode batch
    (kid,) = engine.fork_resident(seqs[0], 1)
    assert kid.block_table == seqs[0].block_table and engine.num_open_branches == 4
    for s, t in zip(seqs + [kid], (5, 6, 7, 8)):
        s.token_ids.append(t)
    logits = engine.forward(seqs + [kid])
    want = [last_logits(model, s.token_ids) for s in seqs + [kid]]
    torch.testing.assert_close(logits, torch.stack(want), atol=1e-4, rtol=1e-4)
    for s in seqs + [kid]:
        engine.release_resident(s)
    assert bm.num_used_blocks == 0 and engine.num_open_branches == 0
    with pytest.raises(ValueError, match="parent: expected a resident sequence"):
        engine.fork_resident(kid, 1)  # released


def test_forward_holding_the_last_token_and_an_idle_engine():
    model = tiny_model("qwen2")
    engine = Engine(model, block_size=4, num_blocks=64)
    p = random_prompts([9])[0]
    seq = engine.add_resident(p)
    assert engine.forward([seq], hold_last=True).shape[0] == 0
    assert seq.token_ids == p and seq.num_computed_tokens == len(p) - 1
    engine.add_request([5, 6, 7], SamplingParams(max_new_tokens=2))
    with pytest.raises(RuntimeError, match="idle"):
        engine.forward([seq])
    while engine.scheduler.has_unfinished():
        engine.step()
    torch.testing.assert_close(engine.forward([seq])[0], last_logits(model, p), atol=1e-4, rtol=1e-4)
    engine.release_resident(seq)


def test_generate_never_preempts_resident_sequences():
    model = tiny_model("qwen2", eos_token_id=None)
    engine = Engine(model, block_size=4, num_blocks=14)
    bm = engine.block_manager
    seq = engine.add_resident(random_prompts([13])[0])
    engine.forward([seq], hold_last=True)
    table, held = list(seq.block_table), bm.num_used_blocks
    params = SamplingParams(n=2, temperature=0, max_new_tokens=14, ignore_eos=True)
    outs = engine.generate(random_prompts([5, 5]), params)
    assert engine.scheduler.num_preemptions > 0  # the blocks left were too few for all the samples at once
    assert all(len(c.token_ids) == 14 for o in outs for c in o.outputs)
    assert seq.block_table == table and bm.num_used_blocks == held and seq.pinned


# --- layering --------------------------------------------------------------------------------------
POLICIES = ["r1core/engine/beam_search.py", "r1core/engine/branches.py", *sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "r1core/search").glob("*.py"))]


def _private_names() -> set[str]:
    """The underscore names of the engine's core objects (their attributes and methods)."""
    engine = Engine(tiny_model("qwen2"), block_size=4, num_blocks=8)
    names = set()
    for obj in (engine, engine.block_manager, engine.scheduler, engine.model_runner, engine.sampler,
                engine.stop_checker, Engine, BlockManager, Scheduler):
        names |= {n for n in dir(obj) if n.startswith("_") and not n.startswith("__")}
    return names


def _reach_ins(tree: ast.AST, private: set[str]) -> list[ast.Attribute]:
    # `self._x` is a module's own state; any other `obj._x` with an engine-core name is a reach-in
    return [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in private
            and not (isinstance(n.value, ast.Name) and n.value.id == "self")]


def test_no_policy_touches_the_engines_private_state():
    private = _private_names()
    assert {"_step", "_seq_ids", "_release", "_preempt"} <= private  # the check sees what it guards
    found = [f"{path}:{n.lineno}: {ast.unparse(n)}" for path in POLICIES
             for n in _reach_ins(ast.parse((ROOT / path).read_text()), private)]
    assert not found, "private engine state used outside the engine core:\n" + "\n".join(found)


def test_the_layering_check_catches_a_reach_in():
    bad = ast.parse("def f(engine):\n"
                    "    engine.block_manager._release(3)\n"
                    "    return self.engine._seq_ids, self._seq_ids\n")
    assert [ast.unparse(n) for n in _reach_ins(bad, _private_names())] == [
        "engine.block_manager._release", "self.engine._seq_ids"]
