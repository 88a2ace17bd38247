"""run_python: one program in the sandbox, its output read as it comes, killed at the limits."""
from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .limits import SandboxLimits
from .result import CPU_TIMEOUT, OUTPUT_LIMIT, WALL_TIMEOUT, SandboxError, SandboxResult, SandboxUnavailable
from .view import OUTSIDE_UID, exposures, interpreter_dirs

BOOTSTRAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap.py")
KILL_GRACE_SECONDS = 5.0  # after a kill, how long the run's processes may take to be gone
_CHUNK = 1 << 16


def run_python(code: str, stdin: str = "", limits: SandboxLimits | None = None, *,
               allow_unsandboxed: bool = False, site_packages: bool = False) -> SandboxResult:
    """Run `code` as `python -I -S main.py` in a fresh sandbox, `stdin` on its standard input; with
    `site_packages` as `python -I main.py` (this environment's packages importable, about 20 ms more).

    Raises SandboxUnavailable where the kernel forbids the namespaces (unless allow_unsandboxed,
    which then runs with rlimits, an emptied environment and a temporary directory only: see
    docs/sandbox.md), SandboxError when the sandbox itself fails; never for the program's own
    failures, which are in the result."""
    if not isinstance(code, str):
        raise TypeError(f"code: expected a str, got {type(code).__name__}")
    if not isinstance(stdin, str):
        raise TypeError(f"stdin: expected a str, got {type(stdin).__name__}")
    limits = SandboxLimits() if limits is None else limits
    if not isinstance(limits, SandboxLimits):
        raise TypeError(f"limits: expected a SandboxLimits, got {type(limits).__name__}")
    sandboxed = not allow_unsandboxed or sandbox_available()
    workdir = None if sandboxed else tempfile.mkdtemp(prefix="r1core-sandbox-")
    try:
        return _run(code, stdin, limits, sandboxed, workdir, site_packages)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


_available: bool | None = None


def sandbox_available() -> bool:
    """Does the kernel let the sandbox make its namespaces here? Probed once per process."""
    global _available
    if _available is None:
        try:
            _run("", "", SandboxLimits(), True, None, False)
            _available = True
        except SandboxUnavailable:
            _available = False
    return _available


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _bootstrap_args(cfg: dict, expose: list) -> list[str]:
    args = [f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in cfg.items() if v is not None]
    return args + ["expose=" + "\t".join([hidden, *paths]) for hidden, paths in expose]


def _run(code: str, stdin: str, limits: SandboxLimits, sandboxed: bool, workdir: str | None,
         site_packages: bool) -> SandboxResult:
    # surrogatepass: a lone surrogate in model text reaches the program as the bytes it stands for
    # (main.py then fails to compile, as it would from a file), instead of failing the call
    code_fd = _memfd("r1core-sandbox-code", code.encode("utf-8", "surrogatepass"))
    stdin_fd = _memfd("r1core-sandbox-stdin", stdin.encode("utf-8", "surrogatepass"))
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    cfg = {"sandboxed": sandboxed, "site_packages": site_packages, "uid": OUTSIDE_UID, "code_fd": code_fd,
           "status_fd": status_w, "workdir": workdir, **limits.for_bootstrap()}
    expose = exposures(interpreter_dirs(site_packages)) if sandboxed else []
    start = time.monotonic()
    try:
        proc = subprocess.Popen([sys.executable, "-I", "-S", BOOTSTRAP, *_bootstrap_args(cfg, expose)], stdin=stdin_fd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(code_fd, status_w),
                                start_new_session=True, env={}, cwd="/")
    finally:
        for fd in (code_fd, stdin_fd, status_w):
            os.close(fd)
    try:
        out, err, killed = _collect(proc, limits, sandboxed, start)
    finally:
        if proc.poll() is None:
            _kill(proc, sandboxed, hard=True)
        proc.wait()
        wall = time.monotonic() - start
        with os.fdopen(status_r, "rb") as f:
            status = f.read().decode(errors="replace").strip().splitlines()
    return _result(status, proc.returncode, out, err, killed, limits, sandboxed, wall)


def _kill(proc: subprocess.Popen, sandboxed: bool, hard: bool = False) -> None:
    """Sandboxed: SIGTERM to the setup process, which kills init and so the whole pid namespace
    and exits once it is empty; SIGKILL (hard) only if it does not. Unsandboxed: the process group."""
    try:
        if sandboxed and not hard:
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGKILL)  # the group of the session run_python started
    except ProcessLookupError:
        pass


def _collect(proc: subprocess.Popen, limits: SandboxLimits, sandboxed: bool, start: float):
    """Read stdout and stderr until both close, keeping max_output_bytes of each; kill at the wall
    clock or the output cap. Returns (stdout bytes, stderr bytes, the reason it was killed or None)."""
    kept = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    sel = selectors.DefaultSelector()
    for f in kept:
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ)
    pidfd = os.pidfd_open(proc.pid)
    sel.register(pidfd, selectors.EVENT_READ)
    killed, deadline = None, start + limits.wall_seconds
    try:
        while any(f in sel.get_map() for f in kept):
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                if killed is not None:  # the grace after a kill ran out too
                    _kill(proc, sandboxed, hard=True)
                    break
                killed, deadline = WALL_TIMEOUT, time.monotonic() + KILL_GRACE_SECONDS
                _kill(proc, sandboxed)
                continue
            for key, _ in sel.select(timeout):
                if key.fileobj == pidfd:  # the setup (or, unsandboxed, the program's) process ended
                    sel.unregister(pidfd)
                    if not sandboxed:  # its children still hold the pipes: they go with it
                        _kill(proc, sandboxed, hard=True)
                    continue
                data = os.read(key.fd, _CHUNK)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                buf = kept[key.fileobj]
                room = limits.max_output_bytes - len(buf)
                buf += data[:room]
                if len(data) > room and killed is None:
                    killed, deadline = OUTPUT_LIMIT, time.monotonic() + KILL_GRACE_SECONDS
                    _kill(proc, sandboxed)
    finally:
        sel.close()
        os.close(pidfd)
        proc.stdout.close()
        proc.stderr.close()
    return bytes(kept[proc.stdout]), bytes(kept[proc.stderr]), killed


def _result(status: list[str], returncode: int, out: bytes, err: bytes, killed: str | None,
            limits: SandboxLimits, sandboxed: bool, wall: float) -> SandboxResult:
    refused = [s.partition(" ")[2] for s in status if s.startswith("unavailable ")]
    if refused:
        raise SandboxUnavailable(
            f"the sandbox could not make its user, mount, network and pid namespaces here ({'; '.join(refused)}); "
            "pass allow_unsandboxed=True to run without them (no network, filesystem or process isolation "
            "then: see docs/sandbox.md)")
    errors = [s.partition(" ")[2] for s in status if s.startswith("error ")]
    if errors:
        raise SandboxError(f"the sandbox failed to start the program: {'; '.join(errors)}")
    cpu = None
    exits = [s.split() for s in status if s.startswith("exit ")]
    if exits:  # sandboxed: init's report of the program's process
        wait_status, cpu = int(exits[-1][1]), float(exits[-1][2])
        returncode = os.waitstatus_to_exitcode(wait_status)
    elif killed is not None:
        returncode = -signal.SIGKILL
    elif sandboxed:
        raise SandboxError(f"the sandbox's setup process ended (status {returncode}) without a report; "
                           f"its stderr: {err[-2000:].decode(errors='replace')}")
    # the kernel's SIGXCPU at the soft limit, or its SIGKILL at the hard one a second later
    at_cpu_limit = cpu is not None and cpu >= limits.cpu_seconds - 0.05
    if killed is None and (returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL and at_cpu_limit)):
        killed = CPU_TIMEOUT
    return SandboxResult(stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"),
                         returncode=returncode, timed_out=killed in (WALL_TIMEOUT, CPU_TIMEOUT),
                         killed_reason=killed, wall_seconds=wall, cpu_seconds=cpu, sandboxed=sandboxed)
