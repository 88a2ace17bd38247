"""math-verify in a child process, so every comparison is bounded in time on any thread.

math-verify's own timeouts use SIGALRM, which only works on the main thread: on a worker thread (a
reward scored in a thread pool, a data loader) an answer like `10^(10^10)` made sympy run without
limit. Here each comparison is a request to one long-lived child process (started on first use,
~1 s to import sympy); when the answer does not come within `timeout` seconds the child is killed,
the comparison counts as no match, and the next call starts a fresh child. The child's stdout is
/dev/null (math-verify logs "Timeout during comparison" and sympy may print), its answers go back on
a separate pipe.

    verify_answer("1/2", "0.5", timeout=2.0) -> True
"""
from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time

STARTUP_TIMEOUT_S = 120.0  # importing sympy on a busy machine


def _compare(gold: str, predicted: str, timeout: float) -> bool:
    """The comparison itself (in the child, on its main thread, where math-verify's own SIGALRM
    timeouts work too and end most slow cases before the parent has to kill the child)."""
    from math_verify import parse, verify

    budget = max(1, int(timeout))
    try:
        gold_parsed = parse(gold, parsing_timeout=budget)
        pred_parsed = parse(predicted, parsing_timeout=budget)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=budget))
    except Exception:  # garbage the parser cannot handle is simply not the answer
        return False


def _serve() -> None:
    """The child's loop: one JSON request [gold, predicted, timeout] per line on stdin, one JSON
    answer per line on the pipe that was stdout; stdout itself goes to /dev/null."""
    out = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    import logging

    logging.disable(logging.CRITICAL)
    import math_verify  # noqa: F401  (imported before "ready": the first request's time is its own)

    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        gold, predicted, timeout = json.loads(line)
        out.write(json.dumps(_compare(gold, predicted, timeout)) + "\n")
        out.flush()


class VerifyWorker:
    """One child process serving comparisons, one at a time (a lock: threads queue)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._buf = b""
        self.restarts = 0  # children killed for running past their timeout (tests read it)

    def _start(self) -> None:
        # the child imports this module from where the parent did, installed or not
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        self._proc = subprocess.Popen([sys.executable, "-m", "r1core.rewards.verify_worker"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self._buf = b""
        if self._read_line(STARTUP_TIMEOUT_S) != b"ready":
            self._kill()
            raise RuntimeError(f"the math-verify worker did not start within {STARTUP_TIMEOUT_S:.0f} s")

    def _read_line(self, timeout: float) -> bytes | None:
        """One line from the child within `timeout` seconds, or None (timed out or the child died)."""
        deadline = time.monotonic() + timeout
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:  # the child exited
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for f in (self._proc.stdin, self._proc.stdout):
                f.close()
            self._proc = None

    def compare(self, gold: str, predicted: str, timeout: float) -> bool:
        """Does math-verify find `predicted` equal to `gold` within `timeout` seconds? False when it
        does not answer in time (the child is killed; the next call starts another)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._kill()
                self._start()
            try:
                self._proc.stdin.write((json.dumps([gold, predicted, timeout]) + "\n").encode())
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self._kill()
                return False
            line = self._read_line(timeout)
            if line is None:
                self.restarts += 1
                self._kill()
                return False
            return bool(json.loads(line))

    def close(self) -> None:
        with self._lock:
            self._kill()


_worker: VerifyWorker | None = None
_worker_lock = threading.Lock()


def worker() -> VerifyWorker:
    """The process's one worker (closed at exit)."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = VerifyWorker()
            atexit.register(_worker.close)
        return _worker


def verify_answer(gold: str, predicted: str, timeout: float) -> bool:
    return worker().compare(gold, predicted, timeout)


if __name__ == "__main__":
    _serve()
