"""Fake step generators with known behaviour, shared by the search and reward-model tests."""
import random

from r1core.search.step_generator import StepProposal
from r1core.tasks import arithmetic


class NoisyAdditionPolicy:
    """Writes the gold scratchpad step with probability `p` and a wrong column sum otherwise; after
    a wrong step every later step and the answer stay wrong (it carries on from its own sums)."""

    def __init__(self, tok, p: float, seed: int):
        self.tok, self.p, self.rng = tok, p, random.Random(seed)

    def _step(self, text: str):
        prompt, _, done = text.partition("=")
        prob = arithmetic.parse_prompt(prompt + "=")
        gold = prob.steps()
        steps, _ = arithmetic.split_completion(done)
        k = len(steps)
        alive = steps == gold[:k]
        step = gold[k]
        if not alive or self.rng.random() > self.p:
            lhs, rhs = step.split("=")
            step = f"{lhs}={(int(rhs) + self.rng.randint(1, 9)) % 19}"
        body = ("T" if k == 0 else "") + step
        last = k == len(gold) - 1
        if last:
            answer = prob.answer if alive and step == gold[k] else prob.answer + self.rng.randint(1, 50)
            body += f";A{answer}"
        else:
            body += ","
        ids = self.tok(body, add_special_tokens=False)["input_ids"]
        return StepProposal(ids + ([self.tok.eos_token_id] if last else []), body, -0.1 * len(ids), last)

    def _text(self, ids):
        return self.tok.decode(ids, skip_special_tokens=True)

    def expand(self, prefix_ids, n, max_step_tokens):
        return [self._step(self._text(prefix_ids)) for _ in range(n)]

    def rollout(self, prefix_ids, n, max_tokens):
        outs = []
        for _ in range(n):
            ids, text = list(prefix_ids), ""
            while True:
                s = self._step(self._text(ids))
                ids += s.token_ids
                text += s.text
                if s.finished:
                    break
            outs.append(StepProposal(ids[len(prefix_ids):], text, 0.0, True))
        return outs
