"""The filesystem view of a sandboxed run: which host directories its unprivileged uid needs and
cannot enter.

The program runs as an unprivileged uid, so a directory only root may enter (root's home, where
pyenv and conda put interpreters) would hide the interpreter's own standard library from it. Each
such directory is covered, inside the run's mount namespace only, by an empty read-only tmpfs that
holds just the interpreter's directories: the rest of it stays out of sight.
"""
from __future__ import annotations

import functools
import os
import stat
import sys

from .result import SandboxError

# The two uids outside the sandbox its in-namespace root and its program run as: unused ones, so
# that the program owns no host file and may signal no host process.
OUTSIDE_UID = 2_100_000_000
RUN_DIR = "/tmp"  # the run's directory inside the sandbox: an empty tmpfs over the host's /tmp


def interpreter_dirs(site_packages: bool = False) -> tuple[str, ...]:
    """The directories the sandboxed interpreter reads: its prefix, and the environment's (a venv)
    when it imports site-packages."""
    prefixes = (sys.base_prefix, sys.base_exec_prefix) + ((sys.prefix, sys.exec_prefix) if site_packages else ())
    dirs = {os.path.realpath(p) for p in prefixes}
    # a directory inside another is covered by it
    return tuple(sorted(d for d in dirs if not any(d != o and d.startswith(o.rstrip("/") + "/") for o in dirs)))


def _first_closed_ancestor(path: str) -> str | None:
    """The outermost directory on `path` that others may not enter, or None."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return d
    return None


@functools.cache
def exposures(dirs: tuple[str, ...]) -> list[list]:
    """[[closed directory, [interpreter dirs under it]], ...] for the bootstrap to reveal; the
    interpreter dirs under the run's directory come as [RUN_DIR, [dirs]]."""
    plan: dict[str, list[str]] = {}
    for d in dirs:
        if any(c in d for c in "\t\n"):  # the bootstrap's arguments separate paths with tabs
            raise SandboxError(f"the interpreter's directory {d!r} has a tab or newline in its name")
        if d == RUN_DIR:
            raise SandboxError(f"the interpreter's directory is {RUN_DIR} itself, which the sandbox covers with "
                               "the run's own empty directory; use an interpreter installed elsewhere")
        if d.startswith(RUN_DIR + "/"):
            # a checkout under /tmp (CI clones there): bound back in, read-only, over the run's own
            # directory, so only the directory's own mode matters, not its host ancestors'
            mode = os.stat(d).st_mode
            if not (mode & stat.S_IROTH and mode & stat.S_IXOTH):
                raise SandboxError(f"the interpreter's directory {d} is not readable by other users (mode "
                                   f"{stat.filemode(mode)}); the sandboxed program runs unprivileged")
            plan.setdefault(RUN_DIR, []).append(d)
            continue
        closed = _first_closed_ancestor(d)
        if closed == d or (not os.stat(d).st_mode & stat.S_IROTH):
            raise SandboxError(f"the interpreter's directory {d} is not readable by other users (mode "
                               f"{stat.filemode(os.stat(d).st_mode)}); the sandboxed program runs unprivileged")
        if closed is not None:
            plan.setdefault(closed, []).append(d)
    return [[closed, paths] for closed, paths in sorted(plan.items())]
