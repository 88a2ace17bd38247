"""Rows as JSON Lines: one JSON object per line, the format `r1core rejection-sample` writes and
`SFTTrainer` reads (a path to a .jsonl file as its train_dataset)."""

from __future__ import annotations

import json
import os


def write_jsonl(rows, path: str | os.PathLike) -> str:
    """Writes every row (a dict) to path through a temporary file renamed into place, so a reader
    never sees half a file; returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for i, r in enumerate(rows):
            if not isinstance(r, dict):
                raise ValueError(f"rows[{i}] must be a dict, got {type(r).__name__}")
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSONL file; a missing file or a line that is not a JSON object is a ValueError
    naming the file and the line (blank lines are skipped)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is not a file (expected JSON Lines: one JSON object per line)")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


__all__ = ["read_jsonl", "write_jsonl"]
