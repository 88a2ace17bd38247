# The two commands of the README. Each does the whole set-up first (scripts/setup.sh).
SHELL := /bin/bash
ACT := if [ -z "$$VIRTUAL_ENV" ]; then . .venv/bin/activate; fi
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: run test bench
run:
	@bash scripts/setup.sh && $(ACT) && python -m r1core.recipes.cli run

test:
	@bash scripts/setup.sh && $(ACT) && python -m pytest -q tests

bench:
	@bash scripts/setup.sh && $(ACT) && python bench/bench_grpo_loss.py
