"""Token-level beam search on the engine's paged KV cache, with the results of transformers 5.x
`model.generate(num_beams=k, do_sample=False, length_penalty=..., early_stopping=..., logits_processor=...)`:

- each step, per prompt, the top `max(2, 1 + n_eos) * k` candidates over (live beam x vocab) by
  cumulative log-prob (float32 log_softmax of the logits, then the logits processors on those
  log-probs with the beams' token ids, prompt included, as transformers applies them: the
  `repetition_penalty`, `no_repeat_ngram_size` and `min_new_tokens` shortcuts in transformers'
  order, then `logits_processor`);
- candidates that end (an eos token, or the last allowed token) among the first k of them become
  finished hypotheses scored `sum_logprobs / generated_len ** length_penalty` (eos counted), and
  the best k finished hypotheses are kept;
- the first k candidates that do not end are the next live beams;
- a prompt stops when its k finished slots are full and (early_stopping=True) or its best live
  beam can no longer beat the worst finished one (transformers' heuristic: the live score over the
  current generated length, or over the longest allowed one for early_stopping="never" with a
  positive length_penalty), or when max_new_tokens is reached.

Reordering beams touches no KV: a surviving parent keeps its Sequence for its first child and is
forked by the block manager (shared blocks, ref counts) for the others; dropped parents are freed.
The shared, partly filled last block is copied on the next write into it (copy-on-write, one
block per extra child). The beams are resident (pinned) sequences of the engine, never preempted,
and every step is one `Engine.forward` over the live beams of all prompts: the engine's own loop
(schedule, run, commit) returns their logits, and this module only chooses the beams.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from r1core.engine.sampling_params import SamplingParams
from r1core.engine.sequence import Sequence


@dataclass
class BeamHypothesis:
    token_ids: list[int]  # generated tokens, the eos that ended it included
    text: str | None
    score: float  # sum of token log-probs / len(token_ids) ** length_penalty
    finish_reason: str  # "stop" (eos) or "length"


@dataclass
class BeamSearchOutput:
    prompt: str | None
    prompt_token_ids: list[int]
    hypotheses: list[BeamHypothesis] = field(default_factory=list)  # best first


class _PromptSearch:
    """The beam state of one prompt: live beams (Sequences, cumulative log-probs) and finished ones."""

    def __init__(self, seq: Sequence, k: int, processors=None, max_new: int = 16):
        self.k = k
        self.max_new = max_new  # new tokens at most: max_new_tokens, or up to the model's last position
        self.processors = processors or []  # callables (input_ids [n, L], scores [n, V]) -> scores
        self.beams: list[Sequence] = [seq]
        self.scores: list[float] = [0.0]
        self.finished: list[tuple[float, list[int], str]] = []  # (score, tokens, reason), best first
        self.improvable = True  # transformers' "early stop heuristic unsatisfied", sticky
        self.done = False


def _check(name: str, value, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def beam_search(engine, prompts, beam_width: int, max_new_tokens: int = 16, length_penalty: float = 1.0,
                early_stopping: bool | str = False, eos_token_id: int | list[int] | None = None,
                num_return_sequences: int = 1, logits_processor=None, *, repetition_penalty: float = 1.0,
                no_repeat_ngram_size: int = 0, min_new_tokens: int = 0) -> list[BeamSearchOutput]:
    """Beam search over `prompts` (strings with a tokenizer, or lists of token ids); one
    BeamSearchOutput per prompt with its `num_return_sequences` best finished hypotheses.
    eos_token_id: None for the model's, an int or a list (empty: never stop at a token).
    logits_processor: a transformers `LogitsProcessorList` or a list of callables
    `(input_ids [beams, len], scores [beams, V]) -> scores`, applied to the log-probs each step;
    repetition_penalty, no_repeat_ngram_size, min_new_tokens: transformers' processors of those
    names (1.0, 0, 0: off), applied before it, as `generate` does."""
    eos, n_keep = _check_args(engine, beam_width, max_new_tokens, num_return_sequences, length_penalty,
                              early_stopping, eos_token_id)
    user_procs = _check_processors(logits_processor)
    _check("repetition_penalty", repetition_penalty, isinstance(repetition_penalty, (int, float))
           and not isinstance(repetition_penalty, bool) and 0 < repetition_penalty < float("inf"), "a number > 0")
    _check("no_repeat_ngram_size", no_repeat_ngram_size, isinstance(no_repeat_ngram_size, int)
           and not isinstance(no_repeat_ngram_size, bool) and no_repeat_ngram_size >= 0, "an int >= 0")
    _check("min_new_tokens", min_new_tokens, isinstance(min_new_tokens, int) and not isinstance(min_new_tokens, bool)
           and min_new_tokens >= 0, "an int >= 0")
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    if not prompts:
        return []
    engine.check_idle("beam_search")
    avail = engine.block_manager.num_blocks - engine.block_manager.num_pinned_blocks  # open branches keep theirs
    checked, needs = _check_prompts(engine, prompts, beam_width, max_new_tokens, avail)
    procs = [_processors(len(ids), eos, repetition_penalty, no_repeat_ngram_size, min_new_tokens, user_procs)
             for _, ids in checked]
    engine.check_weights()
    outputs: list[BeamSearchOutput | None] = [None] * len(prompts)
    with engine.session():
        for wave in _waves(needs, avail, beam_width, engine.scheduler.max_num_seqs):
            searches = _run_wave(engine, [checked[i] for i in wave], beam_width, max_new_tokens, float(length_penalty),
                                 early_stopping, eos, n_keep, [procs[i] for i in wave])
            for i, search in zip(wave, searches):
                text, ids = checked[i]
                hyps = [BeamHypothesis(toks, _decode(engine, toks), score, reason)
                        for score, toks, reason in search.finished[:num_return_sequences]]
                outputs[i] = BeamSearchOutput(text, ids, hyps)
    return outputs


def _check_args(engine, beam_width, max_new_tokens, num_return_sequences, length_penalty, early_stopping,
                eos_token_id) -> tuple[set[int], int]:
    """Check the search's arguments; (the eos token ids, the candidates kept per prompt and step)."""
    _check("beam_width", beam_width, isinstance(beam_width, int) and not isinstance(beam_width, bool) and beam_width >= 1,
           "an int >= 1")
    _check("max_new_tokens", max_new_tokens, isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool)
           and max_new_tokens >= 1, "an int >= 1")
    _check("num_return_sequences", num_return_sequences, isinstance(num_return_sequences, int)
           and 1 <= num_return_sequences <= beam_width, f"an int in [1, beam_width={beam_width}]")
    _check("length_penalty", length_penalty, isinstance(length_penalty, (int, float)) and not isinstance(length_penalty, bool)
           and length_penalty == length_penalty and abs(length_penalty) != float("inf"), "a finite number")
    _check("early_stopping", early_stopping, isinstance(early_stopping, bool) or early_stopping == "never",
           "True, False or 'never'")
    vocab = engine.model_runner.lm_head.out_features
    if eos_token_id is None:
        eos = set(engine.stop_checker.eos_token_ids)
    else:
        ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        _check("eos_token_id", eos_token_id, all(isinstance(t, int) and 0 <= t < vocab for t in ids),
               f"None, or token ids in [0, {vocab})")
        eos = set(ids)
    n_keep = max(2, 1 + len(eos)) * beam_width
    _check("beam_width", beam_width, n_keep <= vocab, f"small enough that {n_keep} candidates fit in the vocabulary ({vocab})")
    return eos, n_keep


def _max_new(engine, ids: list[int], max_new_tokens: int) -> int:
    """The new tokens a prompt's beams may have: max_new_tokens, or fewer where the model's last
    position (max_position_embeddings) comes first; there the hypotheses end with finish_reason
    "length", as `Engine.generate`'s samples do (check_prompt leaves room for one)."""
    if engine.max_positions is None:
        return max_new_tokens
    return min(max_new_tokens, engine.max_positions - len(ids))


def _check_prompts(engine, prompts, k: int, max_new_tokens: int, avail: int) -> tuple[list, list[int]]:
    """The prompts tokenised and checked by the engine, and the blocks each one's k beams need at
    most (`avail`: the blocks the open branches leave)."""
    bm = engine.block_manager
    bs = bm.block_size
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    checked, needs = [], []
    for i, prompt in enumerate(prompts):
        text, ids = engine.check_prompt(i, prompt)
        total = len(ids) + _max_new(engine, ids, max_new_tokens)
        engine.check_request(f"request {i}", len(ids), params, fit=False)  # k beams are checked here
        # the prompt's full blocks once, then every beam's own blocks, the last partial one included
        need = len(ids) // bs + k * (-(-total // bs) - len(ids) // bs)
        if need > avail:
            raise ValueError(f"request {i}: {k} beams of prompt + max_new_tokens ({total}) need up to {need} "
                             f"KV-cache blocks, the cache has {bm.num_blocks} of {bs} tokens"
                             + (f" ({bm.num_blocks - avail} held by open branches)" if avail < bm.num_blocks else ""))
        checked.append((text, ids))
        needs.append(need)
    return checked, needs


def _waves(needs: list[int], avail: int, k: int, max_num_seqs: int) -> list[list[int]]:
    """The prompts in waves whose worst case fits in the cache and the engine's seats."""
    waves, cur, used = [], [], 0
    for i, need in enumerate(needs):
        if cur and (used + need > avail or (len(cur) + 1) * k > max_num_seqs):
            waves.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += need
    waves.append(cur)
    return waves


def _check_processors(logits_processor) -> list:
    if logits_processor is None:
        return []
    if callable(logits_processor) and not isinstance(logits_processor, (list, tuple)):
        logits_processor = [logits_processor]  # one processor (a LogitsProcessorList is a list)
    if not isinstance(logits_processor, (list, tuple)) or not all(callable(p) for p in logits_processor):
        raise ValueError(f"logits_processor must be a LogitsProcessorList or a list of callables "
                         f"(input_ids, scores) -> scores, got {logits_processor!r}")
    return list(logits_processor)


def _processors(prompt_len: int, eos: set[int], repetition_penalty: float, no_repeat_ngram_size: int,
                min_new_tokens: int, user: list) -> list:
    """The processors of one prompt: the shortcuts in the order `generate` builds them, then the user's."""
    out = []
    if repetition_penalty != 1.0 or no_repeat_ngram_size or (min_new_tokens and eos):
        from transformers import MinNewTokensLengthLogitsProcessor, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

        if repetition_penalty != 1.0:
            out.append(RepetitionPenaltyLogitsProcessor(float(repetition_penalty)))
        if no_repeat_ngram_size:
            out.append(NoRepeatNGramLogitsProcessor(no_repeat_ngram_size))
        if min_new_tokens and eos:  # without an eos token nothing is held back
            out.append(MinNewTokensLengthLogitsProcessor(prompt_len, min_new_tokens, sorted(eos)))
    return out + user


def _decode(engine, tokens: list[int]) -> str | None:
    tok = engine.tokenizer
    return None if tok is None else tok.decode(tokens, skip_special_tokens=True)


def _run_wave(engine, prompts, k: int, max_new: int, lp: float, early_stopping, eos: set[int], n_keep: int,
              procs: list[list]) -> list[_PromptSearch]:
    """Search the prompts of one wave side by side: their live beams are resident sequences of the
    engine, run together by `Engine.forward` each step (the prompts' prefill first)."""
    searches = []
    try:
        for (text, ids), proc in zip(prompts, procs):
            searches.append(_PromptSearch(engine.add_resident(ids, text), k, proc, _max_new(engine, ids, max_new)))
        logits = engine.forward([s.beams[0] for s in searches])  # [P, V]
        while True:
            live = [s for s in searches if not s.done]
            rows = 0
            for s in live:
                n = len(s.beams)
                _select(engine, s, logits[rows : rows + n], s.max_new, lp, early_stopping, eos, n_keep)
                rows += n
            live = [s for s in live if not s.done]
            if not live:
                return searches
            logits = engine.forward([seq for s in live for seq in s.beams])  # [sum of live beams, V]
    finally:
        for s in searches:
            for seq in s.beams:
                engine.release_resident(seq)
            s.beams = []


def _select(engine, s: _PromptSearch, logits: torch.Tensor, max_new: int, lp: float, early_stopping,
            eos: set[int], n_keep: int) -> None:
    """One step of one prompt: pick the candidates, book the finished ones, reorder the beams."""
    k = s.k
    V = logits.shape[-1]
    logprobs = torch.log_softmax(logits.float(), -1)  # [n, V]
    if s.processors:
        input_ids = torch.tensor([seq.token_ids for seq in s.beams], device=logits.device)  # [n, L]  prompt included
        for proc in s.processors:
            logprobs = proc(input_ids, logprobs)
    logprobs = logprobs + torch.tensor(s.scores, device=logits.device)[:, None]
    top_scores, top_idx = torch.topk(logprobs.reshape(-1), n_keep)
    top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
    gen_len = s.beams[0].num_output_tokens + 1  # the candidates' generated length
    last = gen_len >= max_new

    # finished candidates: only among the first k, and only while the prompt can still improve
    full = len(s.finished) >= k
    if s.improvable and not (full and early_stopping is True):
        new = []
        for score, idx in zip(top_scores[:k], top_idx[:k]):
            tok = idx % V
            if last or tok in eos:
                parent = s.beams[idx // V]
                new.append((score / gen_len**lp, parent.output_token_ids + [tok], "stop" if tok in eos else "length"))
        if new:
            s.finished = sorted(s.finished + new, key=lambda h: -h[0])[:k]

    if last:
        s.done = True
        return
    # the next live beams: the first k candidates that did not end
    chosen = [(score, idx) for score, idx in zip(top_scores, top_idx) if (idx % V) not in eos][:k]
    _reorder(engine, s, [(idx // V, idx % V) for _, idx in chosen])
    s.scores = [score for score, _ in chosen]

    if len(s.finished) >= k:
        length = (max_new if early_stopping == "never" and lp > 0 else gen_len)
        s.improvable = s.improvable and s.scores[0] / length**lp > s.finished[-1][0]
    if not s.improvable or (early_stopping is True and len(s.finished) >= k):
        s.done = True


def _reorder(engine, s: _PromptSearch, picks: list[tuple[int, int]]) -> None:
    """New beams from (parent beam, token) picks: a parent's first child takes over its Sequence,
    the others fork it (shared blocks); parents with no child are released."""
    parents = list(s.beams)
    taken = [False] * len(parents)
    new = []
    for p, tok in picks:
        parent = parents[p]
        if taken[p]:
            (child,) = engine.fork_resident(parent, 1)
            new.append((child, tok))
        else:
            taken[p] = True
            new.append((parent, tok))
    # tokens go on only after every fork copied its parent's tokens
    for seq, tok in new:
        seq.token_ids.append(tok)
    for p, parent in enumerate(parents):
        if not taken[p]:
            engine.release_resident(parent)
    group = parents[0].group
    group.seqs = [seq for seq, _ in new]
    s.beams = group.seqs
