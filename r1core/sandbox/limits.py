"""What one sandboxed run may use."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one run. Every field is a positive number; see docs/sandbox.md for how each is held.

    wall_seconds      wall clock from start; then the run's every process is killed
    cpu_seconds       CPU time of the program's process (RLIMIT_CPU, whole seconds)
    memory_mb         address space of each process (RLIMIT_AS): a failed allocation, MemoryError
    max_processes     processes and threads of the run at once (RLIMIT_NPROC in its own user namespace)
    max_output_bytes  bytes kept of stdout and of stderr each; past it the run is killed
    max_file_bytes    size of any one file the program writes (RLIMIT_FSIZE)
    max_open_files    file descriptors per process (RLIMIT_NOFILE)
    disk_mb           all files of the run's directory together (the size of its tmpfs)
    """

    wall_seconds: float = 5.0
    cpu_seconds: int = 5
    memory_mb: int = 512
    max_processes: int = 16
    max_output_bytes: int = 1 << 20
    max_file_bytes: int = 1 << 20
    max_open_files: int = 64
    disk_mb: int = 16

    def __post_init__(self):
        if isinstance(self.wall_seconds, bool) or not isinstance(self.wall_seconds, (int, float)) \
                or not self.wall_seconds > 0:
            raise ValueError(f"wall_seconds: expected a positive number, got {self.wall_seconds!r}")
        for name in ("cpu_seconds", "memory_mb", "max_processes", "max_output_bytes", "max_file_bytes",
                     "max_open_files", "disk_mb"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if self.max_open_files < 8:  # the interpreter itself holds a few
            raise ValueError(f"max_open_files: expected at least 8, got {self.max_open_files}")

    def for_bootstrap(self) -> dict:
        """The rlimits and sizes the child process sets, in bytes."""
        return {"cpu_seconds": self.cpu_seconds, "memory_bytes": self.memory_mb << 20,
                "max_processes": self.max_processes, "max_file_bytes": self.max_file_bytes,
                "max_open_files": self.max_open_files, "disk_bytes": self.disk_mb << 20}
