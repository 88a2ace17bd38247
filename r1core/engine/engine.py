"""`Engine`: generation from a Hugging Face causal LM on a paged KV cache, in place on the model's
live parameters. `step()` is three calls: the scheduler picks the batch, the model runner runs it,
and the results are sampled and booked (fork of a group after its prompt, stops, frees).

    engine = Engine(model, tokenizer=tok, block_size=16)
    outs = engine.generate(prompts, SamplingParams(n=8, temperature=1.0, max_new_tokens=256))

Branches for step-wise search (`r1core.engine.branches`) keep their KV resident between calls:

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
from r1core.engine.scheduler import Scheduler
from r1core.engine.sequence import Sequence, SequenceGroup


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if eos is not None:
            ids.update([eos] if isinstance(eos, int) else eos)
            break
    return ids


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
    True requires it, False never uses it."""

    def __init__(self, model, tokenizer=None, block_size: int = 16, num_blocks: int | None = None,
                 memory_budget_bytes: int | None = None, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 2048, enable_prefix_caching: bool = True,
                 cache_dtype: torch.dtype | None = None, cascade: bool | str = "auto", fast_forward: bool | str = "auto"):
        if not getattr(model, "_supports_attention_backend", False) and not hasattr(model, "set_attn_implementation"):
            raise ValueError("model must be a transformers model whose attention goes through AttentionInterface")
        self.model = model
        self.tokenizer = tokenizer
        text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.max_positions = getattr(text_cfg, "max_position_embeddings", None)
        useful = max_num_seqs * -(-self.max_positions // block_size) if self.max_positions else None
        self.model_runner = ModelRunner(model, block_size, num_blocks, memory_budget_bytes, cache_dtype, cascade,
                                        max_useful_blocks=useful, fast_forward=fast_forward)
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
        self._open_branches: dict[int, Sequence] = {}  # seq id -> the sequence of an open branch (branches.py)

    # --- weights --------------------------------------------------------------------------------
    def _signature(self) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in self.model.parameters())

    def weights_updated(self) -> None:
        """Tell the engine the model's weights changed: cached prefixes are dropped."""
        self.block_manager.bump_weight_version()
        self._weights_signature = self._signature()

    def _check_weights(self) -> None:
        sig = self._signature()
        if sig != self._weights_signature:
            self.weights_updated()

    # --- requests -------------------------------------------------------------------------------
    def _tokenize(self, i: int, prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"request {i}: prompt is a string but the Engine has no tokenizer")
            ids = self.tokenizer(prompt)["input_ids"]  # with the tokenizer's special tokens (BOS), as generate
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
        return text, ids

    def _validate(self, i: int, ids: list[int], params: SamplingParams) -> None:
        try:
            params.validate()
        except ValueError as e:
            raise ValueError(f"request {i}: {e}") from None
        if self.max_positions is not None and len(ids) >= self.max_positions:
            raise ValueError(f"request {i}: prompt has {len(ids)} tokens, more than the model's {self.max_positions} "
                             f"positions allow (max_position_embeddings) with one new token")
        # a completion ends with finish_reason "length" at the model's last position
        total = len(ids) + params.max_new_tokens
        if self.max_positions is not None:
            total = min(total, self.max_positions)
        if self.sliding_window is not None and total > self.sliding_window:
            raise ValueError(f"request {i}: prompt + max_new_tokens ({total}) exceed the model's sliding window "
                             f"({self.sliding_window}); sliding-window attention is not implemented")
        if params.stop_strings and self.tokenizer is None:
            raise ValueError(f"request {i}: stop strings need a tokenizer")
        bm = self.block_manager
        held = 0
        if self._open_branches:  # their blocks are never preempted: a request has only the others
            from r1core.engine.branches import held_blocks

            held = held_blocks(self)
        if (total + bm.block_size - 1) // bm.block_size > bm.num_blocks - held:
            raise ValueError(f"request {i}: prompt + max_new_tokens ({total}) do not fit in the KV cache "
                             f"({bm.num_blocks} blocks of {bm.block_size} tokens"
                             + (f", {held} of them held by open branches" if held else "") + ")")

    def add_request(self, prompt, params: SamplingParams, *, _index: int = 0, _checked=None) -> int:
        """Queue a request (it joins the running batch at the next step); returns its request id."""
        text, ids = _checked if _checked is not None else self._tokenize(_index, prompt)
        if _checked is None:  # called directly, not from generate
            self._validate(_index, ids, params)
            if not self.scheduler.has_unfinished():
                self._check_weights()
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item())
        group = SequenceGroup(next(self._request_ids), text, ids, params, seed)
        seq = Sequence(next(self._seq_ids), group, 0, ids)
        seq.fork_into = params.n
        group.seqs.append(seq)
        self._groups[group.request_id] = group
        self.scheduler.add(seq)
        return group.request_id

    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        """One RequestOutput per prompt, in order. prompts: strings (with a tokenizer) or lists of
        token ids; params: one SamplingParams for all or one per prompt."""
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
            text, ids = self._tokenize(i, prompt)
            self._validate(i, ids, p)
            checked.append((text, ids))
        self._check_weights()
        rids = [self.add_request(pr, p, _checked=c) for pr, p, c in zip(prompts, params, checked)]
        done: dict[int, RequestOutput] = {}
        with self._engine_mode():
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
        processor_kwargs: repetition_penalty, no_repeat_ngram_size, min_new_tokens."""
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
        return len(self._open_branches)

    # --- the loop -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _engine_mode(self):
        """The engine's attention function, eval mode and inference mode, restored afterwards."""
        model = self.model
        old = [c._attn_implementation_internal for c in self._configs]
        training = model.training
        try:
            for c in self._configs:
                c._attn_implementation_internal = self.attn_name
            self.model_runner.select_forward()
            if training:
                model.eval()
            with torch.inference_mode():
                yield
        finally:
            for c, o in zip(self._configs, old):
                c._attn_implementation_internal = o
            if training:
                model.train()

    def step(self) -> list[RequestOutput]:
        """Run one scheduled batch; returns the requests that finished in it."""
        with self._engine_mode():
            return self._step()

    def _step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        logits = self.model_runner.run(batch)
        return self._postprocess(batch, logits)

    def _postprocess(self, batch, logits: torch.Tensor) -> list[RequestOutput]:
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
        if not targets:
            return []
        if len(rows) != logits.shape[0]:
            logits = logits[torch.tensor(rows)]
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
                group = seq.group
                if all(s.is_finished for s in group.seqs) and len(group.seqs) == group.params.n:
                    finished.append(self._output(group))
        return finished

    def _fork(self, parent: Sequence) -> list[Sequence]:
        group = parent.group
        children = []
        for j in range(1, parent.fork_into):
            child = Sequence(next(self._seq_ids), group, j, parent.token_ids)
            self.block_manager.fork(parent, child)
            children.append(child)
        parent.fork_into = 1
        group.seqs += children
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
