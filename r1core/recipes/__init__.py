"""Whole pipelines and the command line: `r1core run` (the default R1-Zero run, r1_zero), `r1core
grpo`, `r1core sft`, `r1core eval`, `r1core ttc` (cli), their flags and config files (flags) and the
one model loader (base_model.load_model). Nothing here imports torch at import time, so the command
line can set OMP_WAIT_POLICY first."""
