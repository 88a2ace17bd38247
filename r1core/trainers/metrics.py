"""Training metrics: one JSON object per logged step in `metrics.jsonl`, a tqdm progress bar on
the terminal, and PNG plots (one panel per metric against the step) at the end.

The bar counts steps when only max_steps bounds the run. With a wall-clock budget (max_seconds) it
counts seconds instead: its total is the budget, or the time the remaining steps will take at the
rate so far when max_steps comes first, so it fills up when the run will end; the step and the rate
stand in its description. (A step total of 10000 on a run that stops after 360 s read 3% done when
it finished.)

Only the main process writes (`enabled=False` elsewhere). Lines are flushed as they are written,
so a killed run keeps every step it logged; a resumed run appends.
"""

from __future__ import annotations

import json
import math
import os

from tqdm.auto import tqdm


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN; a missing value plots as a gap
    return v


def _seconds_format(total: float) -> str:
    """tqdm's bar_format for a bar counted in seconds: tenths on runs under 10 s."""
    f = ".1f" if total < 10 else ".0f"
    return f"{{desc}}: {{percentage:3.0f}}%|{{bar}}| {{n:{f}}}/{{total:{f}}} s{{postfix}}"


def _tensorboard_writer(output_dir: str):
    """A SummaryWriter on <output_dir>/tensorboard (report_to=["tensorboard"])."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ValueError(f"report_to=['tensorboard'] needs the tensorboard package (pip install tensorboard): {e}") \
            from None
    return SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard"))


class MetricsLogger:
    def __init__(self, output_dir: str, *, enabled: bool = True, filename: str = "metrics.jsonl",
                 total: int | None = None, desc: str = "train", initial: int = 0, progress: bool = True,
                 max_seconds: float | None = None, file=None, report_to: list[str] | None = None):
        self.enabled = enabled
        self.max_steps = total
        self.max_seconds = max_seconds
        self.desc = desc
        self.step = self._initial = initial
        self.path = os.path.join(output_dir, filename)
        self.records: list[dict] = []
        self._file = None
        self._bar = None
        self._tensorboard = _tensorboard_writer(output_dir) if enabled and "tensorboard" in (report_to or ()) else None
        if enabled:
            os.makedirs(output_dir, exist_ok=True)
            self.records = read_jsonl(self.path) if initial > 0 else []
            self.records = [r for r in self.records if r.get("step", 0) <= initial]
            mode = "a" if initial > 0 else "w"
            if initial > 0:  # drop lines from steps after the checkpoint we resume from
                with open(self.path, "w") as f:
                    f.writelines(json.dumps(r) + "\n" for r in self.records)
            self._file = open(self.path, mode)
            if progress and max_seconds is None:
                self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, leave=True, file=file)
            elif progress:
                self._bar = tqdm(total=max_seconds, desc=f"{desc} step {initial}", unit="s", dynamic_ncols=True, leave=True, file=file,
                                 bar_format=_seconds_format(max_seconds))

    def log(self, record: dict, postfix: dict | None = None) -> None:
        if not self.enabled:
            return
        rec = {k: _plain(v) for k, v in record.items()}
        self.records.append(rec)
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            step = rec.get("step", len(self.records))
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tensorboard.add_scalar(f"{self.desc}/{k}", v, step)
        if self._bar is not None and postfix:
            self._bar.set_postfix({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in postfix.items()}, refresh=False)

    def advance(self, n: int = 1, elapsed: float | None = None) -> None:
        """n more steps done; elapsed: seconds since this run (process) started, which the
        time-budgeted bar needs."""
        self.step += n
        if self._bar is None:
            return
        if self.max_seconds is None:
            self._bar.update(n)
            return
        if elapsed is None:
            raise ValueError("MetricsLogger.advance: elapsed is required when the run has max_seconds")
        done = self.step - self._initial
        total = self.max_seconds
        if self.max_steps is not None and done > 0 and elapsed > 0:
            total = min(total, elapsed / done * (self.max_steps - self._initial))
        self._bar.total = total
        self._bar.n = min(elapsed, total)
        self._bar.bar_format = _seconds_format(total)
        rate = f", {done / elapsed:.{2 if done < 100 * elapsed else 0}f} step/s" if elapsed > 0 else ""
        self._bar.set_description_str(f"{self.desc} step {self.step}{rate}", refresh=False)
        self._bar.refresh()

    def write(self, msg: str) -> None:
        """Print without breaking the progress bar."""
        if self.enabled:
            tqdm.write(msg)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._file is not None:
            self._file.close()
            self._file = None


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_metrics(records: list[dict], keys: list[str], path: str, title: str | None = None) -> str | None:
    """One panel per key (those present in the records) against `step`; writes a PNG at path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(r.get(k) is not None for r in records)]
    if not keys:
        return None
    cols = min(2, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = [(r["step"], r[key]) for r in records if r.get(key) is not None and "step" in r]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if len(pts) > 20:  # per-step values are noisy: faint raw line, and a running mean over ~5% of the run
            ax.plot(xs, ys, alpha=0.3, color="C0")
            w = max(3, len(ys) // 20)
            ax.plot(xs, [sum(ys[max(0, i - w + 1):i + 1]) / len(ys[max(0, i - w + 1):i + 1]) for i in range(len(ys))],
                    color="C0", label=f"mean of {w}")
            ax.legend(loc="best", fontsize=8)
        else:
            ax.plot(xs, ys, marker=".")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
