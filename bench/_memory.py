"""Peak memory of one forward + backward, each measured in a fresh process of the bench script.

A fresh process keeps one path's pools and arenas from counting against the next. The child resets
its peak-RSS mark (VmHWM) through /proc/self/clear_refs once its inputs exist, so what it reports
is the call's growth over the inputs; where /proc cannot do that, ru_maxrss (the process's
lifetime peak) stands in.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def measure_in_child(script: str, impl: str, shape, liger_compiled: bool) -> tuple[float, str]:
    """(peak MB, why it failed or ""): runs `script --mem-child impl --shape a,b,..`, which must
    print peak_growth_mb's JSON line last."""
    cmd = [sys.executable, script, "--mem-child", impl, "--shape", ",".join(map(str, shape))]
    if liger_compiled:
        cmd.append("--liger-compiled")
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return float("nan"), out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"], ""


def print_peak_growth(run) -> None:
    """In the child: run() once and print {"peak_mb": growth of the peak RSS over the RSS before}."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        base = _status_kib("VmRSS")
        run()
        peak = _status_kib("VmHWM")
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        run()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": (peak - base) / 1024}))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")
