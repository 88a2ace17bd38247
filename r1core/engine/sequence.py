"""`Sequence`: the state of one completion being generated (tokens, how many have KV in the cache,
its block table), and `SequenceGroup`: the n samples of one request, which start as a single
sequence that prefills the prompt once and is then forked into n."""

from __future__ import annotations

import enum

from r1core.engine.sample_stream import sample_stream
from r1core.engine.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2
    RESIDENT = 3  # pinned, its KV kept in the cache, not scheduled until resumed


class SequenceGroup:
    """One request: its prompt, params and the n sequences sampled from it (index order)."""

    def __init__(self, request_id: int, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams, seed: int):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.seed = seed
        self.seqs: list[Sequence] = []


class Sequence:
    """Tokens [0, num_computed_tokens) have their KV in the cache (in the blocks of block_table);
    the rest are computed by the next steps. When the last token's logits come out, a new token is
    sampled. A sequence with `fork_into` > 1 is a group's prompt: its first sample is drawn for each
    of the group's sequences, which then share its blocks."""

    __slots__ = (
        "seq_id", "group", "index", "token_ids", "num_prompt_tokens", "num_computed_tokens",
        "block_table", "block_hashes", "status", "rng", "logprobs", "finish_reason",
        "fork_into", "text", "stop_checked_len", "pinned", "twins",
    )

    def __init__(self, seq_id: int, group: SequenceGroup, index: int, token_ids: list[int]):
        self.seq_id = seq_id
        self.group = group
        self.index = index
        self.token_ids = list(token_ids)
        self.num_prompt_tokens = len(group.prompt_token_ids)
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []  # hashes of the full blocks of block_table, in order
        self.status = SequenceStatus.WAITING
        self.rng = sample_stream(group.seed, index)  # its uniforms: depend on nothing else in the batch
        self.logprobs: list[float] = []
        self.finish_reason: str | None = None
        self.fork_into = 1
        self.text: str | None = None  # set when a stop string cut the output
        self.stop_checked_len = 0
        self.pinned = False
        self.twins: list[Sequence] = []

    @property
    def params(self) -> SamplingParams:
        return self.group.params

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, req={self.group.request_id}, idx={self.index}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, blocks={self.block_table}, {self.status.name})")
