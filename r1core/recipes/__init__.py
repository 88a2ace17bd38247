"""Whole pipelines and the command line: `r1core run` (the default R1-Zero run), `r1core grpo`,
`r1core sft`, `r1core eval`. Nothing here imports torch at import time, so the command line can set
OMP_WAIT_POLICY first."""
