"""r1core.engine: many samples per prompt from a Hugging Face causal LM on a paged KV cache, with
fork, copy-on-write, shared-prefix attention, a prefix cache, continuous batching, chunked prefill
and preemption by recomputation."""

from r1core.engine.block_manager import BlockManager
from r1core.engine.branches import Branch, BranchStep
from r1core.engine.engine import Engine
from r1core.engine.outputs import CompletionOutput, RequestOutput
from r1core.engine.sampling_params import SamplingParams
from r1core.engine.scheduler import CacheFull, Scheduler
from r1core.engine.sequence import Sequence, SequenceGroup

__all__ = ["BlockManager", "Branch", "BranchStep", "CacheFull", "CompletionOutput", "Engine", "RequestOutput", "SamplingParams",
           "Scheduler", "Sequence", "SequenceGroup"]
