"""Trained verifiers: an outcome reward model (ORM) and a process reward model (PRM), each a linear
scoring head on a small transformer built from a transformers config, and their trainers.

- ORM: one logit at the last token of prompt + completion; trained with binary cross-entropy on
  "is this completion correct" (Cobbe et al. 2021's verifier, without the LM loss).
- PRM: one logit at the end of every step, i.e. at each token holding the step separator and at the
  completion's last token; trained with binary cross-entropy at those positions only (token
  classification at step separators, as Math-Shepherd and PRM800K train them). Soft labels in
  [0, 1] are allowed.
- Math-Shepherd labels (Wang et al. 2023, arXiv 2312.08935) come from rollouts: for each step
  prefix, roll out `rollouts` completions with the policy; the hard label is 1 if any reaches the
  gold answer, the soft label the fraction that do.

Both models are `Verifier`s, so the searches and best-of-N take them where they take the exact
rule-based verifiers; `scorer(prompt)` gives the step-search scorer directly.

    prm = build_reward_model(tokenizer)
    losses = train_reward_model(prm, tokenizer, examples, kind="prm", max_steps=200)
    verifier = ProcessRewardModel(prm, tokenizer, split=arithmetic.split_completion, separator=",")
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .scoring import Scorer
from .step_generator import check_positive_int
from .verifiers import AGGREGATIONS, Verifier, aggregate_step_scores

KINDS = ("orm", "prm")


class RewardModel(nn.Module):
    """A transformers base model and a linear head: one logit per token, [B, T]."""

    def __init__(self, config):
        super().__init__()
        from transformers import AutoModel

        self.config = config
        self.backbone = AutoModel.from_config(config)
        self.head = nn.Linear(config.hidden_size, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        return self.head(hidden).squeeze(-1)  # [B, T]


def build_reward_model(tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                       max_positions: int = 128, seed: int = 0) -> RewardModel:
    """A randomly initialised Qwen2 backbone over `tokenizer`'s vocabulary with a scoring head."""
    from transformers import Qwen2Config

    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                      num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                      max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id)
    cfg._attn_implementation = "sdpa"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return RewardModel(cfg)


@dataclass
class RewardExample:
    """prompt + completion; labels: one per scored position (ORM: one, PRM: one per step)."""
    prompt: str
    completion: str
    labels: list[float]


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    from r1core.tasks.tokenizer import encode_prompt

    return encode_prompt(tokenizer, prompt)


def score_positions(tokenizer, completion_ids: Sequence[int], kind: str, separator: str = ",") -> list[int]:
    """Indices within the completion of the tokens a reward model is scored at: the last token (ORM);
    every token whose text holds the separator, and the last token if it does not (PRM)."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    n = len(completion_ids)
    if n == 0:
        return []
    if kind == "orm":
        return [n - 1]
    pos = [j for j, t in enumerate(completion_ids) if separator in tokenizer.decode([t])]
    if not pos or pos[-1] != n - 1:
        pos.append(n - 1)
    return pos


def encode_example(tokenizer, ex: RewardExample, kind: str, separator: str = ",") -> tuple[list[int], list[int]]:
    """(input ids, positions of the labels in them); the label count must match the positions."""
    p = _prompt_ids(tokenizer, ex.prompt)
    c = _encode(tokenizer, ex.completion)
    pos = [len(p) + j for j in score_positions(tokenizer, c, kind, separator)]
    if len(pos) != len(ex.labels):
        raise ValueError(f"labels: expected {len(pos)} labels for {kind} example {ex.completion!r} (one per "
                         f"{'step' if kind == 'prm' else 'completion'}), got {len(ex.labels)}")
    for v in ex.labels:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise ValueError(f"labels: expected numbers in [0, 1], got {v!r}")
    return p + c, pos


def collate(tokenizer, examples: Sequence[RewardExample], kind: str, separator: str = ","):
    """input_ids, attention_mask [B, T] (right-padded), labels [B, T] float and label_mask [B, T]
    bool, True only at the scored positions (step separators / the last token)."""
    encoded = [encode_example(tokenizer, ex, kind, separator) for ex in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return _pad(encoded, [ex.labels for ex in examples], pad)


def _pad(encoded: Sequence[tuple[list[int], list[int]]], labels_list: Sequence[Sequence[float]], pad: int):
    T = max(len(ids) for ids, _ in encoded)
    B = len(encoded)
    input_ids = torch.full((B, T), pad, dtype=torch.long)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    labels = torch.zeros(B, T)
    label_mask = torch.zeros(B, T, dtype=torch.bool)
    for i, ((ids, pos), ys) in enumerate(zip(encoded, labels_list)):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention_mask[i, :len(ids)] = 1
        labels[i, pos] = torch.tensor(list(ys), dtype=torch.float)
        label_mask[i, pos] = True
    return input_ids, attention_mask, labels, label_mask


def reward_loss(model: RewardModel, input_ids, attention_mask, labels, label_mask) -> torch.Tensor:
    """Mean binary cross-entropy over the labelled positions only."""
    logits = model(input_ids, attention_mask)  # [B, T]
    return nn.functional.binary_cross_entropy_with_logits(logits[label_mask], labels[label_mask])


def train_reward_model(model: RewardModel, tokenizer, examples: Sequence[RewardExample], *, kind: str = "prm",
                       separator: str = ",", max_steps: int = 200, batch_size: int = 16, learning_rate: float = 3e-3,
                       weight_decay: float = 0.0, seed: int = 0, progress: bool = False) -> list[float]:
    """AdamW on shuffled minibatches for `max_steps`; returns the loss of every step."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if not examples:
        raise ValueError("examples: expected at least one RewardExample")
    check_positive_int("max_steps", max_steps)
    check_positive_int("batch_size", batch_size)
    if not learning_rate > 0:
        raise ValueError(f"learning_rate: expected > 0, got {learning_rate!r}")
    # every example encoded (and checked) once, before the first step
    encoded = [encode_example(tokenizer, ex, kind, separator) for ex in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    was_training = model.training
    model.train()
    order: list[int] = []
    losses = []
    steps = range(max_steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc=f"{kind} training")
    for _ in steps:
        if len(order) < batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        idx = order[:batch_size]
        del order[:batch_size]
        loss = reward_loss(model, *_pad([encoded[i] for i in idx], [examples[i].labels for i in idx], pad))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.train(was_training)
    return losses


def _scored_inputs(tokenizer, prompt: str, completions: Sequence[str], kind: str,
                   separator: str) -> tuple[list[list[int]], list[list[int]]]:
    """(input ids, scored positions in them) of each completion."""
    ids, pos = [], []
    p = _prompt_ids(tokenizer, prompt)
    for c in completions:
        cids = _encode(tokenizer, c)
        ids.append(p + cids)
        pos.append([len(p) + j for j in score_positions(tokenizer, cids, kind, separator)])
    return ids, pos


@torch.no_grad()
def predict(model: RewardModel, tokenizer, prompt: str, completions: Sequence[str], kind: str,
            separator: str = ",") -> list[list[float]]:
    """Sigmoid scores at the scored positions of each completion (one list per completion)."""
    if not completions:
        return []
    ids, pos = _scored_inputs(tokenizer, prompt, completions, kind, separator)
    return _padded_scores(model, ids, pos, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


@torch.no_grad()
def _padded_scores(model: RewardModel, ids: list[list[int]], pos: list[list[int]], pad: int) -> list[list[float]]:
    T = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), T), pad, dtype=torch.long)
    mask = torch.zeros(len(ids), T, dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
    was_training = model.training
    model.eval()
    probs = torch.sigmoid(model(input_ids, mask).float())  # [B, T]
    model.train(was_training)
    return [probs[i, p].tolist() for i, p in enumerate(pos)]


@torch.no_grad()
def _tree_scores(model: RewardModel, ids: list[list[int]], pos: list[list[int]]) -> list[list[float]]:
    from r1core.engine.tree_forward import tree_hidden_states

    hidden = tree_hidden_states(model.backbone, ids)
    return [torch.sigmoid(model.head(h[p]).squeeze(-1).float()).tolist() for h, p in zip(hidden, pos)]


def predict_tree(model: RewardModel, tokenizer, prompt: str, completions: Sequence[str], kind: str,
                 separator: str = ",") -> list[list[float]]:
    """`predict` in one forward over the completions' packed tree (`r1core.engine.tree_forward`):
    the prompt and whatever the completions share (a node's steps, under its sibling steps) are
    computed once. The same scores as `predict`, to float rounding."""
    if not completions:
        return []
    return _tree_scores(model, *_scored_inputs(tokenizer, prompt, completions, kind, separator))


TREE_ATTENTION = (True, False, "auto")


class _TrainedVerifier(Verifier):
    kind = "prm"

    def __init__(self, model: RewardModel, tokenizer, split: Callable[[str], tuple[list[str], str | None]],
                 separator: str = ",", tree_attention: bool | str = "auto"):
        if not isinstance(separator, str) or not separator:
            raise ValueError(f"separator: expected a non-empty string, got {separator!r}")
        if not isinstance(tree_attention, (bool, str)) or tree_attention not in TREE_ATTENTION:
            raise ValueError(f"tree_attention: expected True, False or 'auto', got {tree_attention!r}")
        self.model, self.tokenizer, self._split, self.separator = model, tokenizer, split, separator
        self.step_separator = separator
        self.tree_attention = tree_attention

    def split(self, completion: str):
        return self._split(completion)

    def _completion_scores(self, prompt: str, completion: str) -> list[float]:
        return predict(self.model, self.tokenizer, prompt, [completion], self.kind, self.separator)[0]

    def completions_scores(self, prompt: str, completions: Sequence[str], cache: dict | None = None) -> list[list[float]]:
        """The scores of several completions of `prompt` (a node's sibling steps): in one forward over
        their packed tree (tree_attention True or "auto": packing never computes more than scoring
        alone, a single completion is one causal pass), or each completion scored alone (False).
        The same scores either way, to float rounding.

        cache: the scores already computed for this prompt, keyed by the completion's tokens up to
        the scored one (a scorer keeps one per prompt): a position's score is computed once and
        reused. Computed again, in another call (a longer sequence scored alone, another packed
        tree), it could differ at float rounding; taken from the cache, a step the candidates share
        scores exactly the same for all of them in every round, with the switch on or off, so ties
        (a "min" over that step) stay ties and the search takes the same path either way."""
        if not completions:
            return []
        ids, pos = _scored_inputs(self.tokenizer, prompt, completions, self.kind, self.separator)
        todo = list(range(len(ids)))
        if cache is not None:
            start = len(_prompt_ids(self.tokenizer, prompt))
            keys = [[tuple(x[start : q + 1]) for q in ps] for x, ps in zip(ids, pos)]
            todo = [i for i, ks in enumerate(keys) if any(k not in cache for k in ks)]
        if not todo:
            fresh = []
        elif self.tree_attention is False:
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            fresh = [_padded_scores(self.model, [ids[i]], [pos[i]], pad)[0] for i in todo]
        else:
            fresh = _tree_scores(self.model, [ids[i] for i in todo], [pos[i] for i in todo])
        if cache is None:
            return fresh
        for i, scores in zip(todo, fresh):
            for k, v in zip(keys[i], scores):
                cache.setdefault(k, v)
        return [[cache[k] for k in ks] for ks in keys]

    def _scorer_fns(self, prompt: str, reduce: Callable[[list[float]], float]) -> Scorer:
        """score(completion, finished) with `score_many`, both through one cache (`completions_scores`)."""
        cache: dict = {}

        def score_many(completions: Sequence[str], finished: Sequence[bool]) -> list[float]:
            return [reduce(s) for s in self.completions_scores(prompt, completions, cache)]

        def score(completion: str, finished: bool) -> float:
            return score_many([completion], [finished])[0]

        score.score_many = score_many
        return score


class ProcessRewardModel(_TrainedVerifier):
    """A trained PRM as a Verifier: step i's score is the model's probability at the end of step i.
    tree_attention: how `scorer(...).score_many` scores sibling steps (`completions_scores`)."""
    kind = "prm"

    def score(self, prompt: str, steps: Sequence[str], **_: Any) -> list[float]:
        if not steps:
            return []
        return self._completion_scores(prompt, "".join(s + self.separator for s in steps))[:len(steps)]

    def outcome(self, prompt: str, completion: str, **_: Any) -> float:
        """The score at the completion's last token: the PRM's judgement of the whole solution."""
        scores = self._completion_scores(prompt, completion)
        return scores[-1] if scores else 0.0

    def scorer(self, prompt: str, aggregate: str = "last") -> Scorer:
        """Step-search scorer on raw completion text (steps as generated, separators included)."""
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate: expected one of {AGGREGATIONS}, got {aggregate!r}")

        return self._scorer_fns(prompt, lambda scores: aggregate_step_scores(scores, aggregate) if scores else 1.0)


class OutcomeRewardModel(_TrainedVerifier):
    """A trained ORM as a Verifier; its 'step scores' score each prefix of steps as a solution."""
    kind = "orm"

    def outcome(self, prompt: str, completion: str, **_: Any) -> float:
        scores = self._completion_scores(prompt, completion)
        return scores[-1] if scores else 0.0

    def score(self, prompt: str, steps: Sequence[str], **_: Any) -> list[float]:
        texts = ["".join(s + self.separator for s in steps[:i + 1]) for i in range(len(steps))]
        return [s[-1] for s in predict(self.model, self.tokenizer, prompt, texts, "orm", self.separator)]

    def scorer(self, prompt: str) -> Scorer:
        # an empty completion has no token to score: 1.0, no evidence against it
        return self._scorer_fns(prompt, lambda scores: scores[-1] if scores else 1.0)


def math_shepherd_labels(generator, prompt_ids: Sequence[int], steps: Sequence[Any], is_correct: Callable[[str], bool],
                         *, rollouts: int = 4, max_tokens: int = 64, soft: bool = False) -> list[float]:
    """Labels for the steps of one solution (StepProposals from a step generator, in order), from
    rollouts of the policy after each step prefix: hard (1.0 if any rollout is correct) or soft
    (the fraction that are). A finished step is labelled by its own correctness (nothing to roll
    out); rollouts cost generated tokens, reported by the generator."""
    check_positive_int("rollouts", rollouts)
    check_positive_int("max_tokens", max_tokens)
    if not steps:
        raise ValueError("steps: expected at least one step")
    labels, ids, text = [], list(prompt_ids), ""
    for i, s in enumerate(steps):
        ids += list(s.token_ids)
        text += s.text
        if s.finished:
            if i != len(steps) - 1:
                raise ValueError(f"steps: step {i} finishes the solution but {len(steps) - 1 - i} steps follow it")
            labels.append(1.0 if is_correct(text) else 0.0)
            break
        outs = generator.rollout(ids, rollouts, max_tokens)
        hits = [bool(is_correct(text + o.text)) for o in outs]
        labels.append(sum(hits) / len(hits) if soft else float(any(hits)))
    return labels


def sample_solution(generator, prompt_ids: Sequence[int], *, max_steps: int = 16, max_step_tokens: int = 32) -> list[Any]:
    """One solution as its steps, sampled step by step (each an `expand(..., 1, ...)`)."""
    steps, ids = [], list(prompt_ids)
    for _ in range(max_steps):
        s = generator.expand(ids, 1, max_step_tokens)[0]
        steps.append(s)
        ids += list(s.token_ids)
        if s.finished:
            break
    return steps


def shepherd_examples(generator, rows: Sequence[dict], encode: Callable[[str], list[int]],
                      is_correct: Callable[[dict, str], bool],
                      *, solutions_per_row: int = 2, rollouts: int = 4, soft: bool = False, max_steps: int = 16,
                      max_step_tokens: int = 32, max_tokens: int = 64) -> list[RewardExample]:
    """PRM training examples from the policy itself: sample solutions step by step and label each
    step by Math-Shepherd rollouts. is_correct(row, completion) checks a finished completion."""
    out = []
    for row in rows:
        pids = encode(row["prompt"])
        for _ in range(solutions_per_row):
            steps = sample_solution(generator, pids, max_steps=max_steps, max_step_tokens=max_step_tokens)
            if not steps[-1].finished:
                continue  # ran out of steps: its last label would have no end of solution to judge
            labels = math_shepherd_labels(generator, pids, steps, lambda c, row=row: is_correct(row, c),
                                          rollouts=rollouts, max_tokens=max_tokens, soft=soft)
            # a step with no text (an end of sequence right after a delimiter) has no position of
            # its own in the text: the PRM scores that end at the previous step's separator
            kept = [(s, y) for s, y in zip(steps, labels) if s.text]
            if kept:
                out.append(RewardExample(row["prompt"], "".join(s.text for s, _ in kept), [y for _, y in kept]))
    return out


def labels_accuracy(model: RewardModel, tokenizer, examples: Sequence[RewardExample], kind: str,
                    separator: str = ",") -> float:
    """Share of labelled positions where the prediction falls on the label's side of 0.5."""
    hits = total = 0
    for ex in examples:
        pred = predict(model, tokenizer, ex.prompt, [ex.completion], kind, separator)[0]
        for p, y in zip(pred, ex.labels):
            hits += (p >= 0.5) == (y >= 0.5)
            total += 1
    return hits / total if total else math.nan
