"""A local sandbox for model-written Python: namespaces, a read-only filesystem view and rlimits.

    from r1core.sandbox import run_python, SandboxLimits
    res = run_python("print(int(input()) * 2)", stdin="21\\n", limits=SandboxLimits(wall_seconds=5))
    res.stdout, res.stderr, res.returncode, res.timed_out, res.killed_reason, res.wall_seconds

Each run: new user, mount, network, pid, ipc, uts and cgroup namespaces; an unprivileged uid; every
mount read-only but an empty tmpfs on /tmp (its working and home directory); an emptied environment;
rlimits; the wall clock kills the whole pid namespace. docs/sandbox.md has what is held and how.
"""
from .limits import SandboxLimits
from .result import CPU_TIMEOUT, KILLED_REASONS, OUTPUT_LIMIT, WALL_TIMEOUT, SandboxError, SandboxResult, SandboxUnavailable
from .run import run_python, sandbox_available

__all__ = [
    "run_python", "sandbox_available", "SandboxLimits", "SandboxResult", "SandboxError", "SandboxUnavailable",
    "WALL_TIMEOUT", "CPU_TIMEOUT", "OUTPUT_LIMIT", "KILLED_REASONS",
]
