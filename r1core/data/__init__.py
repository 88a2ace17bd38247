"""Data steps that make training sets from models: rejection sampling (generate, score, keep the
passing completions) and the JSON Lines files they are kept in."""

from r1core.data.jsonl import read_jsonl, write_jsonl
from r1core.data.rejection_sampling import SampledDataset, rejection_sample

__all__ = ["SampledDataset", "read_jsonl", "rejection_sample", "write_jsonl"]
