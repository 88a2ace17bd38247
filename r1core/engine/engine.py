"""`Engine`: generation from a Hugging Face causal LM on a paged KV cache, in place on the model's
live parameters. The engine has one loop: the scheduler picks the batch, the model runner runs it,
and the results are committed (the KV booked, a group forked after its prompt), then sampled and
stopped. `generate` and `step` run it over requests; search policies run it over resident
sequences through the public steps below.

    engine = Engine(model, tokenizer=tok, block_size=16)
    outs = engine.generate(prompts, SamplingParams(n=8, temperature=1.0, max_new_tokens=256))

Resident sequences are pinned: their KV stays in the cache between calls and the scheduler never
preempts them. `add_resident`, `fork_resident` and `release_resident` make and drop them; `forward`
computes their pending tokens and returns the logits (beam search chooses the beams from those),
`decode` samples them until they stop (branches). Every request, whichever the caller, goes
through `check_prompt` and `check_request`. Branches (`r1core.engine.branches`) and beam search
(`r1core.engine.beam_search`) are policies on these steps:

    root = engine.open_branch(prompt_ids)
    kids = engine.fork_branch(root, 4)          # share root's blocks, copy-on-write
    steps = engine.extend(kids, SamplingParams(temperature=1.0, stop="\n\n", max_new_tokens=64))
    engine.release(root)
"""

from __future__ import annotations

import contextlib
import itertools

import torch

from r1core.engine import attention
from r1core.engine.block_manager import BlockManager
from r1core.engine.model_runner import ModelRunner
from r1core.engine.outputs import CompletionOutput, RequestOutput
from r1core.engine.sampler import Sampler, StopChecker
from r1core.engine.sampling_params import SamplingParams
from r1core.engine.scheduler import CacheFull, Scheduler
from r1core.engine.sequence import Sequence, SequenceGroup, SequenceStatus
from r1core.tasks.tokenizer import encode_prompt

# the params of a resident sequence until a step gives it its own (`forward` samples nothing)
_RESIDENT_PARAMS = SamplingParams(n=1, max_new_tokens=1)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if eos is not None:
            ids.update([eos] if isinstance(eos, int) else eos)
            break
    return ids


def _check_sizes(**sizes) -> None:
    """Each size an int >= 1 (None allowed for the ones sized from memory)."""
    for name, v in sizes.items():
        if v is None and name in ("num_blocks", "memory_budget_bytes"):
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1{' or None' if name in ('num_blocks', 'memory_budget_bytes') else ''}, got {v!r}")


class Engine:
    """Generates from `model` (a transformers causal LM whose attention goes through
    `AttentionInterface`) on a paged KV cache of `num_blocks` blocks of `block_size` tokens. With
    num_blocks=None the cache is sized from `memory_budget_bytes`, by default 20% of the memory
    available now (MemAvailable on the CPU, free memory on a GPU), capped at what max_num_seqs
    sequences of the model's full length can use. The model is used in place: each
    generate reads its current parameters; a change in them (detected from the parameters' version
    counters, or announced with `weights_updated()`) invalidates the prefix cache.

    cascade: shared-prefix attention for the samples of a group in decode steps: True, False, or
    "auto" (when it saves reading at least 4096 prefix tokens in a step: below that the second
    attention call and the merge cost more than they save on the CPU).

    fast_forward: run Llama-family decoders (Llama, Qwen2, Qwen3, Mistral) through
    `r1core.engine.fast_forward.LeanForward`, the same ops on the same modules without transformers'
    module plumbing (bitwise the same hidden states); "auto" uses it where it is exact and falls
    back to the modules' own forward otherwise (hooks, LoRA-wrapped layers, other architectures),
    True requires it, False never uses it.

    tree_attention: the rows of one request in a step (a prompt's beams, a search node's children)
    attend through one `r1kernels.tree_attention` call over their shared prefix and their new
    tokens: True (every step of several rows), False, or "auto" (where it measured faster: forks
    whose new tokens are all they differ in, several tokens each, a long shared prefix; see
    `ModelRunner.choose_trees`). The same results either way, to float rounding."""

    def __init__(self, model, tokenizer=None, block_size: int = 16, num_blocks: int | None = None,
                 memory_budget_bytes: int | None = None, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 2048, enable_prefix_caching: bool = True,
                 cache_dtype: torch.dtype | None = None, cascade: bool | str = "auto", fast_forward: bool | str = "auto",
                 tree_attention: bool | str = "auto"):
        if not getattr(model, "_supports_attention_backend", False) and not hasattr(model, "set_attn_implementation"):
            raise ValueError("model must be a transformers model whose attention goes through AttentionInterface")
        _check_sizes(block_size=block_size, num_blocks=num_blocks, memory_budget_bytes=memory_budget_bytes,
                     max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens)
        if not isinstance(enable_prefix_caching, bool):
            raise ValueError(f"enable_prefix_caching must be True or False, got {enable_prefix_caching!r}")
        self.model = model
        self.tokenizer = tokenizer
        text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.max_positions = getattr(text_cfg, "max_position_embeddings", None)
        useful = max_num_seqs * -(-self.max_positions // block_size) if self.max_positions else None
        self.model_runner = ModelRunner(model, block_size, num_blocks, memory_budget_bytes, cache_dtype, cascade,
                                        max_useful_blocks=useful, fast_forward=fast_forward,
                                        tree_attention=tree_attention)
        self.block_manager = BlockManager(self.model_runner.num_blocks, block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs, max_num_batched_tokens)
        self.sampler = Sampler()
        self.attn_name = attention.register()
        self.stop_checker = StopChecker(tokenizer, _eos_ids(model, tokenizer), self.max_positions)
        windows = [m.sliding_window for m in model.modules() if getattr(m, "sliding_window", None)]
        self.sliding_window = min(windows) if windows else None
        self._configs = [m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "_attn_implementation_internal")]
        self._configs = list({id(c): c for c in self._configs}.values())
        self._weights_signature = self._signature()
        self._request_ids = itertools.count()
        self._seq_ids = itertools.count()
        self._groups: dict[int, SequenceGroup] = {}
        self._session_depth = 0

    # --- weights --------------------------------------------------------------------------------
    def _signature(self) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in self.model.parameters())

    def weights_updated(self) -> None:
        """Tell the engine the model's weights changed: cached prefixes are dropped."""
        self.block_manager.bump_weight_version()
        self._weights_signature = self._signature()

    def check_weights(self) -> None:
        """Compare the model's parameters with those the cache was filled with (data pointers and
        version counters); on a change, `weights_updated`."""
        sig = self._signature()
        if sig != self._weights_signature:
            self.weights_updated()

    # --- requests: one tokenisation and one validation for generate, branches and beams ----------
    def check_prompt(self, i: int, prompt) -> tuple[str | None, list[int]]:
        """(text or None, token ids) of request i's prompt (a string, with a tokenizer, or token ids),
        checked: not empty, ids in the vocabulary, a position left for a new token."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"request {i}: prompt is a string but the Engine has no tokenizer")
            # the one prompt encoding (bos, no other special tokens) the trainers and eval use too
            try:
                ids = encode_prompt(self.tokenizer, prompt)
            except ValueError as e:
                raise ValueError(f"request {i}: {e}") from None
            text = prompt
        else:
            try:
                ids = [int(t) for t in prompt]
            except (TypeError, ValueError):
                raise ValueError(f"request {i}: prompt must be a string or a list of token ids, got {type(prompt).__name__}") from None
            text = None
        if not ids:
            raise ValueError(f"request {i}: prompt is empty")
        vocab = self.model_runner.lm_head.out_features
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"request {i}: prompt has token ids outside [0, {vocab})")
        self._check_room(f"request {i}: prompt", len(ids))
        return text, ids

    def _check_room(self, what: str, num_tokens: int) -> None:
        if self.max_positions is not None and num_tokens >= self.max_positions:
            raise ValueError(f"{what} has {num_tokens} tokens, more than the model's {self.max_positions} "
                             f"positions allow (max_position_embeddings) with one new token")

    def check_request(self, name: str, num_tokens: int, params: SamplingParams, *, of: str = "prompt",
                      fit: bool = True) -> None:
        """Check that `num_tokens` tokens (`of`: what they are, for errors) can be continued with
        `params` on this model; `name` ("request 3", "branches[2]") leads every error. fit: also
        check that tokens + max_new_tokens fit in the blocks pinned sequences leave (a branch's step
        is not: it is rolled back when the cache runs out)."""
        try:
            params.validate()
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        self._check_room(f"{name}: {of}", num_tokens)
        # a completion ends with finish_reason "length" at the model's last position
        total = num_tokens + params.max_new_tokens
        if self.max_positions is not None:
            total = min(total, self.max_positions)
        if self.sliding_window is not None and total > self.sliding_window:
            raise ValueError(f"{name}: {of} + max_new_tokens ({total}) exceed the model's sliding window "
                             f"({self.sliding_window}); sliding-window attention is not implemented")
        if params.stop_strings and self.tokenizer is None:
            raise ValueError(f"{name}: stop strings need a tokenizer")
        vocab = self.model_runner.lm_head.out_features
        outside = [t for t in params.stop_token_ids or () if t >= vocab]
        if outside:  # the model can never sample them: the request would run to max_new_tokens
            raise ValueError(f"{name}: stop_token_ids {outside} are outside the model's vocabulary [0, {vocab})")
        if not fit:
            return
        bm = self.block_manager
        held = bm.num_pinned_blocks if bm.pinned else 0  # never preempted: a request has only the others
        if (total + bm.block_size - 1) // bm.block_size > bm.num_blocks - held:
            raise ValueError(f"{name}: {of} + max_new_tokens ({total}) do not fit in the KV cache "
                             f"({bm.num_blocks} blocks of {bm.block_size} tokens"
                             + (f", {held} of them held by open branches" if held else "") + ")")

    def check_idle(self, what: str) -> None:
        """Raise unless no request added with add_request is still running (resident sequences run
        alone: a step of theirs would otherwise step those requests too and lose their outputs)."""
        if self.scheduler.has_unfinished():
            raise RuntimeError(f"{what} needs an idle engine: requests added with add_request are still running")

    def add_request(self, prompt, params: SamplingParams, *, _index: int = 0, _checked=None) -> int:
        """Queue a request (it joins the running batch at the next step); returns its request id."""
        text, ids = _checked if _checked is not None else self.check_prompt(_index, prompt)
        if _checked is None:  # called directly, not from generate
            self.check_request(f"request {_index}", len(ids), params)
            if not self.scheduler.has_unfinished():
                self.check_weights()
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item())
        group = SequenceGroup(next(self._request_ids), text, ids, params, seed)
        seq = Sequence(next(self._seq_ids), group, 0, ids)
        seq.fork_into = params.n
        group.seqs.append(seq)
        self._groups[group.request_id] = group
        self.scheduler.add(seq)
        return group.request_id

    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        """One RequestOutput per prompt, in order. prompts: strings (with a tokenizer, encoded by
        `encode_prompt`) or lists of token ids; params: one SamplingParams for all or one per prompt.
        A completion that reaches the model's last position (max_position_embeddings) before
        max_new_tokens ends there with finish_reason "length" (as beam_search's hypotheses)."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = SamplingParams() if params is None else params
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        elif len(params) != len(prompts):
            raise ValueError(f"params: got {len(params)} SamplingParams for {len(prompts)} prompts")
        checked = []
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            if not isinstance(p, SamplingParams):
                raise ValueError(f"request {i}: params must be a SamplingParams, got {type(p).__name__}")
            text, ids = self.check_prompt(i, prompt)
            self.check_request(f"request {i}", len(ids), p)
            checked.append((text, ids))
        self.check_weights()
        rids = [self.add_request(pr, p, _checked=c) for pr, p, c in zip(prompts, params, checked)]
        done: dict[int, RequestOutput] = {}
        with self.session():
            while self.scheduler.has_unfinished():
                for out in self._step():
                    done[out.request_id] = out
        return [done.pop(r) for r in rids]

    def beam_search(self, prompts, beam_width: int, max_new_tokens: int = 16, length_penalty: float = 1.0,
                    early_stopping: bool | str = False, eos_token_id: int | list[int] | None = None,
                    num_return_sequences: int = 1, logits_processor=None, **processor_kwargs):
        """Beam search with the results of `model.generate(num_beams=beam_width, do_sample=False, ...)`;
        one `BeamSearchOutput` per prompt (see `r1core.engine.beam_search`). logits_processor: a
        transformers `LogitsProcessorList` or a list of callables `(input_ids, scores) -> scores`;
        processor_kwargs: repetition_penalty, no_repeat_ngram_size, min_new_tokens. At the model's last
        position (max_position_embeddings) the hypotheses end with finish_reason "length", as
        `generate`'s samples do."""
        from r1core.engine.beam_search import beam_search

        return beam_search(self, prompts, beam_width, max_new_tokens, length_penalty, early_stopping, eos_token_id,
                           num_return_sequences, logits_processor, **processor_kwargs)

    # --- branches (r1core.engine.branches) ------------------------------------------------------
    def open_branch(self, prompt):
        """A `Branch` on `prompt` whose KV stays resident: fork it, `extend` it, `release` it."""
        from r1core.engine.branches import open_branches

        return open_branches(self, [prompt])[0]

    def open_branches(self, prompts) -> list:
        """`open_branch` for many prompts, prefilled in shared batches."""
        from r1core.engine.branches import open_branches

        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            raise ValueError("prompts: expected a list of prompts (use open_branch for one)")
        return open_branches(self, list(prompts))

    def fork_branch(self, branch, n: int) -> list:
        """n children of `branch` sharing all its blocks (copy-on-write on the partly filled last one)."""
        from r1core.engine.branches import fork_branch

        return fork_branch(self, branch, n)

    def extend(self, branches, params: SamplingParams | list[SamplingParams], sample_indices=None) -> list:
        """Grow each branch by one step (up to its stop string, stop token, eos or max_new_tokens) in
        one batched loop; one `BranchStep` per branch. Their KV stays resident."""
        from r1core.engine.branches import extend

        return extend(self, branches, params, sample_indices)

    def release(self, branch) -> None:
        """Prune a branch: the blocks only it holds go back to the free list."""
        from r1core.engine.branches import release

        release(self, branch)

    @property
    def num_open_branches(self) -> int:
        return self.block_manager.num_pinned

    # --- resident sequences: the steps a search policy (branches, beam search) calls -------------
    def add_resident(self, token_ids: list[int], text: str | None = None) -> Sequence:
        """A pinned sequence on checked prompt tokens (`check_prompt`), holding the cached blocks of
        its longest cached prefix; its other tokens are computed by `forward` or `decode`. It keeps
        its blocks until `release_resident`, and is never preempted."""
        group = SequenceGroup(next(self._request_ids), text, token_ids, _RESIDENT_PARAMS, 0)
        seq = Sequence(next(self._seq_ids), group, 0, token_ids)
        group.seqs.append(seq)
        seq.status = SequenceStatus.RESIDENT
        self.block_manager.pin(seq)
        self.block_manager.match_prefix(seq)
        return seq

    def fork_resident(self, parent: Sequence, n: int) -> list[Sequence]:
        """n pinned sequences sharing every block of the resident `parent` (the partly filled last one
        included, copied on the first write), in its group (not added to `group.seqs`: the caller
        says which sequences a search keeps)."""
        if not parent.pinned:
            raise ValueError(f"parent: expected a resident sequence (add_resident, fork_resident), got {parent!r}")
        kids = []
        for _ in range(n):
            child = Sequence(next(self._seq_ids), parent.group, parent.index, parent.token_ids)
            child.status = SequenceStatus.RESIDENT
            self.block_manager.fork(parent, child)
            self.block_manager.pin(child)
            kids.append(child)
        return kids

    def release_resident(self, seq: Sequence) -> None:
        """Free a resident sequence's blocks (the shared ones lose one reference)."""
        self.block_manager.release_pinned(seq)
        seq.status = SequenceStatus.FINISHED

    def forward(self, seqs: list[Sequence], hold_last: bool = False) -> torch.Tensor:
        """Compute the pending tokens of resident sequences (all of them, or all but the last with
        hold_last) in the engine's loop, batched as the scheduler's token budget allows; returns the
        float32 logits [len(seqs), V] of each one's last token (no rows with hold_last). A sequence
        is never preempted: `CacheFull` when the free blocks run out (what was computed is kept)."""
        self.check_idle("forward")
        held = [s.token_ids.pop() for s in seqs] if hold_last else None
        rows: dict[int, torch.Tensor] = {}
        try:
            # every sequence has a token to compute, but one whose prompt is cached up to its held one
            self.scheduler.resume([s for s in seqs if s.num_computed_tokens < s.num_tokens] if hold_last else seqs)
            with self.session():
                while self.scheduler.has_unfinished():
                    targets, logits = self._forward_step()
                    self.scheduler.park(targets)
                    if hold_last:
                        continue
                    if not rows and targets == seqs:  # identity: sequences define no __eq__
                        return logits  # all in one batch, in order: a beam search's decode step
                    rows.update((id(t), row) for t, row in zip(targets, logits))
        finally:
            self.scheduler.park(self.scheduler.running)
            if held is not None:
                for s, t in zip(seqs, held):
                    s.token_ids.append(t)
        if hold_last or not seqs:
            return torch.empty(0, self.model_runner.lm_head.out_features, device=self.model_runner.device)
        return torch.stack([rows[id(s)] for s in seqs])

    def decode(self, seqs: list[Sequence]) -> None:
        """Sample each resident sequence token by token (its group's params and its own stream)
        until it stops (stop string or token, eos, max_new_tokens, the model's last position), in the
        engine's loop beside one another. Sequences with the same blocks and the same pending tokens
        (forks not yet extended) compute those tokens once and sample from the same logits, as a
        group's samples share their prompt. `CacheFull` when the free blocks run out (the sequences
        stay resident, with what they sampled; the caller rolls back)."""
        self.check_idle("decode")
        leaders: dict[tuple, Sequence] = {}
        for seq in seqs:
            key = (tuple(seq.block_table), seq.num_computed_tokens, tuple(seq.token_ids[seq.num_computed_tokens :]))
            lead = leaders.setdefault(key, seq)
            if lead is not seq:
                lead.twins.append(seq)
        for lead in leaders.values():
            lead.fork_into = 1 + len(lead.twins)
        try:
            self.scheduler.resume(list(leaders.values()))
            with self.session():
                while self.scheduler.has_unfinished():
                    self._step()
        finally:
            self.scheduler.park(self.scheduler.running)
            for lead in leaders.values():
                lead.twins, lead.fork_into = [], 1

    # --- the loop -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self):
        """The engine's attention function, eval mode and inference mode for a run of calls,
        restored afterwards; inside a session, a nested one costs nothing."""
        if self._session_depth:
            yield
            return
        model = self.model
        old = [c._attn_implementation_internal for c in self._configs]
        training = model.training
        self._session_depth = 1
        try:
            for c in self._configs:
                c._attn_implementation_internal = self.attn_name
            self.model_runner.select_forward()
            if training:
                model.eval()
            with torch.inference_mode():
                yield
        finally:
            self._session_depth = 0
            for c, o in zip(self._configs, old):
                c._attn_implementation_internal = o
            if training:
                model.train()

    def step(self) -> list[RequestOutput]:
        """Run one scheduled batch; returns the requests that finished in it."""
        with self.session():
            return self._step()

    def _step(self) -> list[RequestOutput]:
        """One turn of the loop: schedule, run, then commit, sample and stop."""
        batch = self._schedule()
        logits = self.model_runner.run(batch)
        return self._postprocess(batch, logits)

    def _schedule(self):
        try:
            return self.scheduler.schedule()
        except CacheFull as e:
            if e.copies:  # tables the step re-pointed before the cache ran out must hold their tokens' KV
                self.model_runner.copy_blocks(e.copies)
            raise

    def _forward_step(self) -> tuple[list[Sequence], torch.Tensor]:
        """One turn of the loop without sampling (`forward`): schedule, run, commit."""
        batch = self._schedule()
        logits = self.model_runner.run(batch)
        return self._commit(batch, logits)

    def _postprocess(self, batch, logits: torch.Tensor) -> list[RequestOutput]:
        targets, logits = self._commit(batch, logits)
        return self._sample(targets, logits)

    def _commit(self, batch, logits: torch.Tensor) -> tuple[list[Sequence], torch.Tensor]:
        """Book the batch's KV; the sequences whose tokens are now all computed and their logits rows
        (a group's prompt is forked into its samples, which take its row)."""
        bm = self.block_manager
        rows, targets = [], []
        row = 0
        for seq, k in zip(batch.seqs, batch.num_new_tokens):
            bm.commit(seq, k)
            if seq.num_computed_tokens < seq.num_tokens:
                continue  # a prompt chunk: nothing to sample yet
            targets.append(seq)
            rows.append(row)
            if seq.fork_into > 1:  # a group's prompt: every sample draws from its last logits
                children = self._fork(seq)
                targets += children
                rows += [row] * len(children)
            row += 1
        if len(rows) != logits.shape[0]:
            logits = logits[torch.tensor(rows)]
        return targets, logits

    def _sample(self, targets: list[Sequence], logits: torch.Tensor) -> list[RequestOutput]:
        """Sample a token for each target, check its stops; the requests that finished."""
        if not targets:
            return []
        tokens, logprobs = self.sampler(logits, targets)
        finished = []
        for seq, tok, lp in zip(targets, tokens, logprobs):
            seq.token_ids.append(tok)
            if seq.params.logprobs:
                seq.logprobs.append(lp)
            reason = self.stop_checker(seq)
            if reason is not None:
                seq.finish_reason = reason
                self.scheduler.finish(seq)
                if seq.pinned:  # a resident sequence's step: its caller reads it
                    continue
                group = seq.group
                if all(s.is_finished for s in group.seqs) and len(group.seqs) == group.params.n:
                    finished.append(self._output(group))
        return finished

    def _fork(self, parent: Sequence) -> list[Sequence]:
        bm = self.block_manager
        if parent.twins:  # resident forks waiting on this pending token: they share its KV now
            children, parent.twins = parent.twins, []
            for child in children:
                bm.free(child)
                bm.fork(parent, child)
        else:
            group = parent.group
            children = []
            for j in range(1, parent.fork_into):
                child = Sequence(next(self._seq_ids), group, j, parent.token_ids)
                bm.fork(parent, child)
                children.append(child)
            group.seqs += children
        parent.fork_into = 1
        self.scheduler.add_forked(parent, children)
        return children

    def _output(self, group: SequenceGroup) -> RequestOutput:
        del self._groups[group.request_id]
        outs = [
            CompletionOutput(s.index, s.output_token_ids, self.stop_checker.final_text(s),
                             list(s.logprobs) if group.params.logprobs else None, s.finish_reason)
            for s in sorted(group.seqs, key=lambda s: s.index)
        ]
        return RequestOutput(group.request_id, group.prompt, group.prompt_token_ids, outs)
