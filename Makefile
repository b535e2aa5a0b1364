# Benchmarks (issue 8): run every bench/*.py script, then print one table from bench/results.
PY ?= .venv/bin/python
BENCH_SCRIPTS := $(filter-out bench/harness.py,$(sort $(wildcard bench/*.py)))

.PHONY: bench bench-full bench-setup bench-table

bench-setup:
	bench/setup.sh

bench: bench-setup
	@rm -f bench/results/*.json
	@fail=0; for s in $(BENCH_SCRIPTS); do echo "== $$s --quick"; $(PY) $$s --quick || { echo "!! $$s failed"; fail=1; }; done; \
	$(PY) bench/harness.py; exit $$fail

bench-full: bench-setup
	@rm -f bench/results/*.json
	@fail=0; for s in $(BENCH_SCRIPTS); do echo "== $$s --full"; $(PY) $$s --full || { echo "!! $$s failed"; fail=1; }; done; \
	$(PY) bench/harness.py; exit $$fail

bench-table:
	@$(PY) bench/harness.py
