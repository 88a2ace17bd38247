# The two commands of the README. Each does the whole set-up first (scripts/setup.sh).
SHELL := /bin/bash
ACT := if [ -z "$$VIRTUAL_ENV" ]; then . .venv/bin/activate; fi
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: run test bench
run:
	@bash scripts/setup.sh && $(ACT) && python -m r1core.recipes.cli run

test:
	@bash scripts/setup.sh && $(ACT) && ruff check . && python -m pytest -q tests

# the microbenchmark suite (docs/benchmarks.md); the end-to-end scripts are bench/bench_*.py
bench:
	@bash scripts/setup.sh && $(ACT) && mkdir -p bench/micro/.benchmarks && \
		python -m pytest bench/micro --benchmark-autosave --benchmark-storage=bench/micro/.benchmarks \
		--benchmark-json=bench/micro/.benchmarks/latest.json
