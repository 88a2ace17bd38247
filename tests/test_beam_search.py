"""Engine beam search against transformers' `model.generate(num_beams=k, do_sample=False)` on
random-initialised tiny models: same hypotheses (token ids) in the same order, same scores; block
accounting (beams share the prompt's blocks, dropped beams free theirs); bad input."""

from __future__ import annotations

import pytest
import torch
from _engine_models import char_tokenizer, random_prompts, tiny_model

from r1core.engine import Engine

MAX_NEW = 10


def hf_beams(model, prompt, k, n_return, max_new, lp, es, eos):
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         num_beams=k, do_sample=False, max_new_tokens=max_new, length_penalty=lp, early_stopping=es,
                         num_return_sequences=n_return, eos_token_id=eos, pad_token_id=0,
                         return_dict_in_generate=True, output_scores=True)
    return out.sequences[:, len(prompt):].tolist(), out.sequences_scores.tolist()


def assert_same(engine, model, prompts, k, n_return, lp, es, eos, atol=1e-4):
    outs = engine.beam_search(prompts, beam_width=k, max_new_tokens=MAX_NEW, length_penalty=lp, early_stopping=es,
                              eos_token_id=eos, num_return_sequences=n_return)
    reasons = []
    for prompt, out in zip(prompts, outs):
        want, want_scores = hf_beams(model, prompt, k, n_return, MAX_NEW, lp, es, eos)
        # transformers pads the shorter hypotheses with `pad_token_id or eos_token_id[0]`: pad 0 is falsy
        fill = -1 if eos is None else eos if isinstance(eos, int) else eos[0]
        width = len(want[0])
        got = [h.token_ids + [fill] * (width - len(h.token_ids)) for h in out.hypotheses]
        assert got == want, (prompt, [h.score for h in out.hypotheses], want_scores)
        torch.testing.assert_close(torch.tensor([h.score for h in out.hypotheses]), torch.tensor(want_scores),
                                   atol=atol, rtol=1e-5)
        assert out.prompt_token_ids == prompt
        reasons += [h.finish_reason for h in out.hypotheses]
    assert engine.block_manager.num_used_blocks == 0  # every beam's blocks are back
    return reasons


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("lp,es", [(1.0, False), (0.5, True), (2.0, "never")])
def test_matches_generate(arch, k, lp, es):
    model = tiny_model(arch, eos_token_id=None)
    engine = Engine(model, block_size=4, num_blocks=256)
    prompts = random_prompts([1, 6, 13])  # different lengths in one call, a 1-token prompt included
    # without eos: the model has none
    reasons = assert_same(engine, model, prompts, k, k, lp, es, eos=None)
    assert set(reasons) == {"length"}
    # with eos reached: the first early token of a hypothesis that, taken as eos, ends a returned one
    prompts, eos = stopping_eos(engine, prompts, k, lp, es, tries=8 if lp <= 1.0 else 1)
    if lp <= 1.0:  # a length_penalty of 2 favours the long hypotheses over the ones eos cuts short
        assert eos is not None, "no early token ends a returned hypothesis as eos"
    eos = 1 if eos is None else eos
    reasons = assert_same(engine, model, prompts, k, 1, lp, es, eos=eos)
    reasons += assert_same(engine, model, prompts, k, k, lp, es, eos=eos)
    if lp <= 1.0:
        assert "stop" in reasons


def test_several_eos_tokens():
    model = tiny_model("qwen2", eos_token_id=None)
    engine = Engine(model, block_size=4, num_blocks=256)
    prompts, stops = stopping_eos(engine, random_prompts([4, 11]), 3, 1.0, False)
    assert stops is not None, "no early token ends a returned hypothesis as eos"
    # the token that ends a hypothesis goes second, so eos ids beyond the first are honoured too
    other = next(t for t in range(2, 50) if t != stops)
    reasons = assert_same(engine, model, prompts, 3, 3, 1.0, False, eos=[other, stops])
    assert "stop" in reasons


def stopping_eos(engine, prompts, k, lp, es, tries=8):
    """(prompts, eos): the given prompts and an eos that stops one of their hypotheses, else fresh
    random prompts of the same lengths that have one (a random model need not stop early on the
    first draw); eos None after `tries` draws."""
    for _ in range(tries):
        eos = eos_that_stops(engine, prompts, k, lp, es)
        if eos is not None:
            break
        prompts = random_prompts([len(p) for p in prompts])
    return prompts, eos


def eos_that_stops(engine, prompts, k, lp, es):
    """A token that, as eos, ends one of the k returned hypotheses of some prompt (engine only: the
    comparison with transformers comes after), or None."""
    outs = engine.beam_search(prompts, beam_width=k, max_new_tokens=MAX_NEW, num_return_sequences=k)
    tried = set()
    for pos in range(4):
        for out in outs:
            for h in out.hypotheses:
                tok = h.token_ids[pos]
                if tok in tried:
                    continue
                tried.add(tok)
                res = engine.beam_search(prompts, beam_width=k, max_new_tokens=MAX_NEW, length_penalty=lp,
                                         early_stopping=es, eos_token_id=tok, num_return_sequences=k)
                if any(h2.finish_reason == "stop" for o in res for h2 in o.hypotheses):
                    return tok
    return None


def test_text_and_string_prompts():
    model, tok = tiny_model("qwen2", eos_token_id=None), char_tokenizer()
    engine = Engine(model, tokenizer=tok, block_size=4, num_blocks=128)
    out = engine.beam_search(["hello", "abc"], beam_width=3, max_new_tokens=6, eos_token_id=[])
    for o, p in zip(out, ["hello", "abc"]):
        assert o.prompt == p and len(o.hypotheses) == 1
        h = o.hypotheses[0]
        assert len(h.token_ids) == 6 and h.text == tok.decode(h.token_ids, skip_special_tokens=True)
        want, _ = hf_beams(model, tok(p)["input_ids"], 3, 1, 6, 1.0, False, None)
        assert [h.token_ids] == want


def test_beams_share_prompt_blocks_and_dropped_beams_free_theirs(monkeypatch):
    from r1core.engine import beam_search as bs_mod

    model = tiny_model("llama")
    bsize, k, plen = 4, 4, 17
    engine = Engine(model, block_size=bsize, num_blocks=256, enable_prefix_caching=False)
    bm = engine.block_manager
    seen = []
    real_reorder = bs_mod._reorder

    def spy(engine_, s, picks):
        before = {b for seq in s.beams for b in seq.block_table}
        dropped = {p for p in range(len(s.beams))} - {p for p, _ in picks}
        dropped_only = {b for p in dropped for b in s.beams[p].block_table} - {
            b for p, _ in picks for b in s.beams[p].block_table}
        real_reorder(engine_, s, picks)
        after = {b for seq in s.beams for b in seq.block_table}
        # the blocks only dropped beams held are free now; nothing else was freed
        assert all(bm.ref_count(b) == 0 for b in dropped_only)
        assert after == before - dropped_only
        seen.append((len(s.beams), [list(seq.block_table) for seq in s.beams], len(dropped_only)))

    monkeypatch.setattr(bs_mod, "_reorder", spy)
    engine.beam_search(random_prompts([plen]), beam_width=k, max_new_tokens=12, eos_token_id=[])
    assert bm.num_used_blocks == 0
    full = plen // bsize
    for n, tables, _ in seen:
        assert n == k
        # the prompt's full blocks are one set of blocks, shared by every beam: no KV copy of the prompt
        assert all(t[:full] == tables[0][:full] for t in tables)
        assert all(bm.ref_count(b) == 0 for b in tables[0][:full])  # the search is over: freed
    assert any(dropped for *_, dropped in seen), "no step dropped a beam that owned a block"
    assert bm.peak_used_blocks <= full + k * (-(-(plen + 12) // bsize) - full)
    assert bm.peak_used_blocks < k * -(-(plen + 12) // bsize)  # less than k full copies


@pytest.mark.parametrize("kwargs,field", [
    (dict(beam_width=0), "beam_width"), (dict(beam_width=2.0), "beam_width"), (dict(beam_width=100), "beam_width"),
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(num_return_sequences=3), "num_return_sequences"),
    (dict(length_penalty=float("nan")), "length_penalty"), (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(eos_token_id=[999]), "eos_token_id"),
])
def test_bad_input(kwargs, field):
    engine = Engine(tiny_model("qwen2"), block_size=4, num_blocks=256)
    args = dict(beam_width=2, max_new_tokens=4) | kwargs
    with pytest.raises(ValueError, match=field):
        engine.beam_search([[5, 6, 7]], **args)
    assert engine.beam_search([], beam_width=2) == []
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.beam_search([[]], beam_width=2)
    small = Engine(tiny_model("qwen2"), block_size=4, num_blocks=8)
    with pytest.raises(ValueError, match="KV-cache blocks"):
        small.beam_search([[5] * 10], beam_width=4, max_new_tokens=20)


def test_length_at_the_models_last_position():
    # as generate (test_engine.py::test_length_at_the_models_last_position): the hypotheses end at
    # the model's last position with finish_reason "length" instead of an error
    engine = Engine(tiny_model("qwen2", eos_token_id=None), block_size=4, num_blocks=256)
    (out,) = engine.beam_search([[5] * 250], beam_width=2, max_new_tokens=100, num_return_sequences=2)
    assert [len(h.token_ids) for h in out.hypotheses] == [6, 6]
    assert {h.finish_reason for h in out.hypotheses} == {"length"}
    short = engine.beam_search([[5] * 250], beam_width=2, max_new_tokens=6, num_return_sequences=2)[0]
    assert [h.token_ids for h in short.hypotheses] == [h.token_ids for h in out.hypotheses]


def test_prompts_run_in_waves_when_the_cache_is_small():
    model = tiny_model("qwen2", eos_token_id=None)
    engine = Engine(model, block_size=4, num_blocks=20)  # room for one prompt's beams at a time
    prompts = random_prompts([9, 5, 11])
    outs = engine.beam_search(prompts, beam_width=2, max_new_tokens=MAX_NEW)
    for prompt, out in zip(prompts, outs):
        want, _ = hf_beams(model, prompt, 2, 1, MAX_NEW, 1.0, False, None)
        assert [out.hypotheses[0].token_ids] == want
    assert engine.block_manager.peak_used_blocks <= 20


# --- logits processors ------------------------------------------------------------------------------

def hf_beams_processed(model, prompt, k, n_return, max_new, eos, **kw):
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         num_beams=k, do_sample=False, max_new_tokens=max_new, num_return_sequences=n_return,
                         eos_token_id=eos, pad_token_id=0, return_dict_in_generate=True, output_scores=True, **kw)
    return out.sequences[:, len(prompt):].tolist(), out.sequences_scores.tolist()


def assert_same_processed(engine, model, prompts, k, eos, ours: dict, theirs: dict):
    outs = engine.beam_search(prompts, beam_width=k, max_new_tokens=MAX_NEW, eos_token_id=eos, num_return_sequences=k,
                              **ours)
    got_all = []
    for prompt, out in zip(prompts, outs):
        want, want_scores = hf_beams_processed(model, prompt, k, k, MAX_NEW, eos, **theirs)
        fill = -1 if eos is None else eos
        width = len(want[0])
        got = [h.token_ids + [fill] * (width - len(h.token_ids)) for h in out.hypotheses]
        assert got == want, (prompt, ours)
        torch.testing.assert_close(torch.tensor([h.score for h in out.hypotheses]), torch.tensor(want_scores),
                                   atol=1e-4, rtol=1e-5)
        got_all.append([h.token_ids for h in out.hypotheses])
    assert engine.block_manager.num_used_blocks == 0
    return got_all


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_logits_processors_match_generate(arch):
    from transformers import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
    )

    model = tiny_model(arch, eos_token_id=None)
    engine = Engine(model, block_size=4, num_blocks=256)
    prompts = random_prompts([3, 8])
    k = 3
    plain = [[h.token_ids for h in o.hypotheses]
             for o in engine.beam_search(prompts, beam_width=k, max_new_tokens=MAX_NEW, eos_token_id=None,
                                         num_return_sequences=k)]
    # the random models repeat themselves: a no-repeat constraint or a penalty changes the beams
    procs = LogitsProcessorList([NoRepeatNGramLogitsProcessor(2), RepetitionPenaltyLogitsProcessor(1.5)])
    got = assert_same_processed(engine, model, prompts, k, None, dict(logits_processor=procs),
                                dict(logits_processor=procs))
    assert got != plain, "the processors changed nothing: the test cannot fail"
    for hyps in got:
        for h in hyps:
            pairs = list(zip(h, h[1:]))
            assert len(pairs) == len(set(pairs))  # no bigram repeated within the generated tokens
    # the keyword shortcuts, against generate's own
    assert_same_processed(engine, model, prompts, k, None, dict(no_repeat_ngram_size=3, repetition_penalty=1.3),
                          dict(no_repeat_ngram_size=3, repetition_penalty=1.3))
    # a plain callable works as a processor: ban one token everywhere
    banned = plain[0][0][0]

    def ban(input_ids, scores):
        scores[:, banned] = -float("inf")
        return scores

    got = engine.beam_search(prompts, beam_width=k, max_new_tokens=MAX_NEW, eos_token_id=None, logits_processor=[ban],
                             num_return_sequences=k)
    assert all(banned not in h.token_ids for o in got for h in o.hypotheses)
    # min_new_tokens: an eos that ends hypotheses early is held back for the first tokens
    prompts, eos = stopping_eos(engine, prompts, k, 1.0, False)
    assert eos is not None, "no early token ends a returned hypothesis as eos"
    for m in (3, 6):
        got = assert_same_processed(engine, model, prompts, k, eos, dict(min_new_tokens=m), dict(min_new_tokens=m))
        assert all(len(h) >= min(m + 1, MAX_NEW) or eos not in h for hyps in got for h in hyps)
        procs = [MinNewTokensLengthLogitsProcessor(len(prompts[0]), m, eos)]
        assert_same_processed(engine, model, prompts[:1], k, eos, dict(logits_processor=procs),
                              dict(logits_processor=LogitsProcessorList(procs)))


@pytest.mark.parametrize("kwargs,field", [
    (dict(logits_processor=[1]), "logits_processor"), (dict(logits_processor="x"), "logits_processor"),
    (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
    (dict(min_new_tokens=1.5), "min_new_tokens"),
])
def test_bad_processor_input(kwargs, field):
    engine = Engine(tiny_model("qwen2"), block_size=4, num_blocks=64)
    with pytest.raises(ValueError, match=field):
        engine.beam_search([[5, 6, 7]], beam_width=2, max_new_tokens=4, **kwargs)
