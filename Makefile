# Benchmarks (issue 8): run every bench/*.py script, then print one table from bench/results.
PY ?= .venv/bin/python
BENCH_SCRIPTS := $(filter-out bench/harness.py,$(sort $(wildcard bench/*.py)))

.PHONY: bench bench-full bench-setup bench-table fuzz test-etcd-full

# Fuzzing (issue 9): the fuzz tests with a long budget (CI runs them with a short one).
# SDNCTL_FUZZ_EXAMPLES=N sets the examples per RPC (default 3000 here, 30 in CI).
fuzz:
	SDNCTL_FUZZ=long .venv/bin/pytest -q tests/unit/test_fuzz_api.py tests/unit/test_fuzz_topology.py tests/unit/test_fuzz_unpack.py

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

# Issue 7: the replica allocation test at full size (64 threads, 10,000 addresses, 200 subnets
# through three controllers on a three-member etcd); the default suite runs 1,000 addresses.
test-etcd-full:
	SDNCTL_REPLICA_ADDRESSES=10000 .venv/bin/pytest -s tests/unit/test_etcd_replicas.py -k threads
