"""Asynchronous rollouts for the GRPO trainer: step k+1's completions are generated in a worker
process while step k trains (verl's one-step-off-policy pipeline).

Why a process: torch's intra-op thread pool is process-wide, so a generation thread would share
(and fight over) the trainer's threads, and the engine's decode loop holds the GIL. The worker is a
spawned process with its own `torch.set_num_threads` (1: decoding a batch of small sequences is
bound by the engine's per-token work, not by GEMMs, and measured no faster on 2 threads here), its
own r1core Engine and a copy of the policy whose parameters live in shared memory: the trainer
publishes its weights by copying them into that copy while the worker is idle, so a generation
always reads one consistent version. The trainer keeps its own thread count: in a first look on the
busy 2-core dev machine (load ~3, one run each) the default run's steps took ~0.45 s with the
trainer at 2 threads beside the worker, ~1 s with it at 1 thread, ~0.8 s synchronously (its GEMMs
do use the second core); bench/bench_async_rollouts.py measures it properly.

The pipeline, per optimizer step k (weights version k = k updates done):
    collect batch k (generated from version k - 1; at the first step, from version 0, waited for)
    publish version k, submit batch k + 1            (the worker generates while ...)
    train on batch k                                 (... this runs: version k + 1)
so a batch is trained one update after the weights that sampled it: staleness 1, within any
max_staleness >= 1. max_staleness 0 leaves nothing to overlap: the trainer runs synchronously
and never starts a worker. The off-policy drift is bounded by PPO's clip, whose old log-probs are
the sampling log-probs of those weights, or reweighted by truncated importance sampling
(GRPOConfig.tis_cap) when that is set.

Shutdown: `close()` (the trainer calls it when train() returns or raises) terminates a worker that
is generating (that batch is not wanted any more), asks an idle one to exit and terminates it if it
does not in time; the worker is a daemon process besides, and a finalizer closes it if the trainer
is dropped. An exception in the worker comes back as a
RuntimeError with its traceback at the next collect; a worker that died is reported the same way.
"""

from __future__ import annotations

import copy
import queue
import time
import traceback
import weakref
from dataclasses import dataclass

import torch
import torch.multiprocessing as mp

# how long close() waits for the worker to exit by itself before terminating it
JOIN_SECONDS = 10.0
# how often a waiting collect checks that the worker is alive
POLL_SECONDS = 0.5


@dataclass
class Completion:
    """What the trainer reads of an engine completion (the engine's own objects stay in the worker)."""

    token_ids: list[int]
    logprobs: list[float] | None
    text: str
    finish_reason: str | None


def _worker_main(model, tokenizer, engine_kwargs: dict, threads: int, requests, results) -> None:
    torch.set_num_threads(threads)
    try:
        from r1core.engine import Engine

        engine = Engine(model, tokenizer=tokenizer, **engine_kwargs)
        results.put(("ready", None, None))
        while True:
            msg = requests.get()
            if msg is None:
                return
            tag, prompts, params = msg
            engine.weights_updated()  # the trainer published new weights into the shared parameters
            with torch.no_grad():
                outs = engine.generate(prompts, params)
            comps = [Completion(list(c.token_ids), None if c.logprobs is None else list(c.logprobs), c.text, c.finish_reason)
                     for o in outs for c in o.outputs]
            results.put(("ok", tag, comps))
    except BaseException:  # noqa: BLE001 - everything goes back to the trainer, which raises it
        results.put(("error", None, traceback.format_exc()))


def _stop(proc, requests, results, state: dict) -> None:
    """Stops the worker (close and the finalizer): a generation in flight is abandoned (terminate);
    an idle worker is asked to exit, its queue drained meanwhile (a process exits only once what it
    put on a queue is read), and terminated if it does not exit in time."""
    if proc.is_alive() and not state.get("pending"):
        try:
            requests.put(None)
        except (OSError, ValueError):
            pass
        deadline = time.monotonic() + JOIN_SECONDS
        while proc.is_alive() and time.monotonic() < deadline:
            try:
                results.get(timeout=0.1)
            except (queue.Empty, OSError, ValueError, EOFError):
                pass
    if proc.is_alive():
        proc.terminate()
    proc.join(JOIN_SECONDS)


class RolloutWorker:
    """A generation process over a shared-memory copy of `model`; one request in flight at a time."""

    def __init__(self, model: torch.nn.Module, tokenizer, engine_kwargs: dict, threads: int = 1):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.policy = copy.deepcopy(model).eval().requires_grad_(False)
        self.policy.share_memory()
        ctx = mp.get_context("spawn")  # fork would inherit the trainer's OpenMP pool mid-flight
        self.requests, self.results = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=_worker_main, name="r1core-rollouts", daemon=True,
                                args=(self.policy, tokenizer, engine_kwargs, threads, self.requests, self.results))
        self.proc.start()
        self._state = {"pending": False}  # shared with the finalizer, which must not hold self
        self._finalizer = weakref.finalize(self, _stop, self.proc, self.requests, self.results, self._state)
        self._receive("ready")

    @torch.no_grad()
    def publish(self, model: torch.nn.Module) -> None:
        """Copies model's weights into the worker's policy; only between requests (the worker idle)."""
        if self.pending:
            raise RuntimeError("publish while a generation is in flight: the worker would read torn weights")
        for dst, src in zip(self.policy.state_dict().values(), model.state_dict().values()):
            dst.copy_(src)

    @property
    def pending(self) -> bool:
        """A generation is in flight."""
        return self._state["pending"]

    def submit(self, tag, prompts: list[list[int]], params: list) -> None:
        if self.pending:
            raise RuntimeError("a generation is in flight already: collect it first")
        self.requests.put((tag, prompts, params))
        self._state["pending"] = True

    def collect(self) -> tuple[object, list[Completion]]:
        """(tag, completions) of the request in flight, waited for."""
        if not self.pending:
            raise RuntimeError("no generation in flight")
        _, tag, comps = self._receive("ok")
        self._state["pending"] = False
        return tag, comps

    def _receive(self, expected: str):
        while True:
            try:
                msg = self.results.get(timeout=POLL_SECONDS)
                break
            except queue.Empty:
                if not self.proc.is_alive():
                    self.close()
                    hint = ("; a script that starts it needs Python's `if __name__ == \"__main__\":` guard (the worker is a "
                            "spawned process, which imports the main module)") if expected == "ready" else ""
                    raise RuntimeError(f"the rollout worker died (exit code {self.proc.exitcode}){hint}") from None
        if msg[0] == "error":
            self._state["pending"] = False  # the worker is done: let it exit
            self.close()
            raise RuntimeError(f"the rollout worker failed:\n{msg[2]}")
        if msg[0] != expected:
            raise RuntimeError(f"the rollout worker sent {msg[0]!r}, expected {expected!r}")
        return msg

    def close(self) -> None:
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self.proc.is_alive()


class AsyncRollouts:
    """The trainer's side of the pipeline: which prompts are in flight, and the staleness of each
    collected batch. `trainer` is a GRPOTrainer (its _next_prompts, generation_request and model)."""

    def __init__(self, trainer, engine_kwargs: dict, threads: int = 1):
        self.trainer = trainer
        self.worker = RolloutWorker(trainer.model, trainer.tokenizer, engine_kwargs, threads)
        self.in_flight: tuple[list[int], int] | None = None  # (prompt rows, weights version) submitted

    def _submit_next(self) -> None:
        t = self.trainer
        idx = t._next_prompts()
        prompts, params = t.generation_request(idx)
        self.worker.publish(t.model)
        self.worker.submit(None, prompts, params)
        self.in_flight = (idx, t.global_step)

    def round(self) -> tuple[list[int], list[Completion], dict]:
        """This step's prompt rows and completions (G per prompt, groups contiguous), then the next
        step's generation is started; info: rollout_wait_seconds (the time this step waited for its
        completions), rollout_staleness (optimizer steps between the sampling weights and these)."""
        t0 = time.perf_counter()
        if self.in_flight is None:  # the first step (or the first after a resume): nothing prefetched
            self._submit_next()
        idx, version = self.in_flight
        _, comps = self.worker.collect()
        self.in_flight = None
        waited = time.perf_counter() - t0
        staleness = self.trainer.global_step - version
        self._submit_next()
        return idx, comps, {"rollout_wait_seconds": waited, "rollout_staleness": float(staleness)}

    def prompts_in_flight(self) -> int:
        """Prompts taken from the stream for a batch not trained yet (all ranks)."""
        return 0 if self.in_flight is None else len(self.in_flight[0]) * self.trainer.world_size

    def close(self) -> None:
        self.worker.close()
        self.in_flight = None
