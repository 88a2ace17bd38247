"""What a run gives back, and the errors of the sandbox itself (never of the program)."""
from __future__ import annotations

from dataclasses import dataclass

WALL_TIMEOUT = "wall_timeout"  # past SandboxLimits.wall_seconds
CPU_TIMEOUT = "cpu_timeout"  # killed by the kernel at SandboxLimits.cpu_seconds
OUTPUT_LIMIT = "output_limit"  # stdout or stderr past SandboxLimits.max_output_bytes
KILLED_REASONS = (WALL_TIMEOUT, CPU_TIMEOUT, OUTPUT_LIMIT)


class SandboxError(RuntimeError):
    """The sandbox could not start or run the program (not: the program failed)."""


class SandboxUnavailable(SandboxError):
    """The kernel forbids the namespaces the sandbox needs; `allow_unsandboxed=True` runs without."""


@dataclass(frozen=True)
class SandboxResult:
    """One run. `stdout`/`stderr` are decoded as UTF-8 (invalid bytes replaced), each cut at
    `max_output_bytes`. `returncode` is the program's exit status, negative for a signal (as in
    subprocess). `killed_reason` is why the sandbox stopped it (one of KILLED_REASONS) or None;
    `timed_out` is True for the wall-clock and the CPU limit. `cpu_seconds` is the program
    process's CPU time (None when unknown: killed by the wall clock)."""

    stdout: str
    stderr: str
    returncode: int
    timed_out: bool
    killed_reason: str | None
    wall_seconds: float
    cpu_seconds: float | None = None
    sandboxed: bool = True

    @property
    def ok(self) -> bool:
        """Exited 0 by itself."""
        return self.returncode == 0 and self.killed_reason is None
