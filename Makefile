# Benchmarks (issue 8): run every bench/*.py script, then print one table from bench/results.
PY ?= .venv/bin/python
BENCH_SCRIPTS := $(filter-out bench/harness.py bench/_%.py,$(sort $(wildcard bench/*.py)))

.PHONY: bench bench-full bench-scale bench-setup bench-table fuzz fuzz-policy test-etcd-full test-registry-full soak

# Fuzzing (issue 9): the fuzz tests with a long budget (CI runs them with a short one).
# SDNCTL_FUZZ_EXAMPLES=N sets the examples per RPC (default 3000 here, 30 in CI).
fuzz:
	SDNCTL_FUZZ=long .venv/bin/pytest -q tests/unit/test_fuzz_api.py tests/unit/test_fuzz_topology.py tests/unit/test_fuzz_unpack.py tests/unit/test_fuzz_docker_plugin.py
	$(MAKE) fuzz-policy

# Network policy (issue 22): the truth table with more rounds of generated policies (the
# default run has one). SDNCTL_POLICY_ROUNDS and SDNCTL_POLICY_SEED choose them.
SDNCTL_POLICY_ROUNDS ?= 6
fuzz-policy:
	SDNCTL_POLICY_ROUNDS=$(SDNCTL_POLICY_ROUNDS) $(PY) -m pytest -q tests/netns/test_policy_lab.py -k truth_table

bench-setup:
	bench/setup.sh

bench: bench-setup
	@rm -f bench/results/*.json
	@fail=0; for s in $(BENCH_SCRIPTS); do echo "== $$s --quick"; $(PY) $$s --quick || { echo "!! $$s failed"; fail=1; }; done; \
	$(PY) bench/harness.py --readme; exit $$fail

# BENCH_QUICK="controller overlay": those scripts run --quick in bench-full (their full size
# takes longer than the machine can give; the result files say which mode each ran).
BENCH_QUICK ?=
bench-full: bench-setup
	@rm -f bench/results/*.json
	@fail=0; for s in $(BENCH_SCRIPTS); do mode=--full; \
	  case " $(BENCH_QUICK) " in *" $$(basename $$s .py) "*) mode=--quick;; esac; \
	  echo "== $$s $$mode"; $(PY) $$s $$mode || { echo "!! $$s failed"; fail=1; }; done; \
	$(PY) bench/harness.py --readme; exit $$fail

# Issue 21: `sdnctl up` of 100 lab hosts x 10 containers through the CLI, with its breakdown,
# CreatePolicy to enforced, a host joining and leaving, RSS and `down`: on SQLite, then on a
# three-member etcd with two controller replicas. Several GB and both cores for minutes.
SCALE_HOSTS ?= 100
SCALE_PER_HOST ?= 10
bench-scale: bench-setup
	@fail=0; for store in sqlite etcd; do echo "== bench/scale.py --store $$store"; \
	  $(PY) bench/scale.py --full --hosts $(SCALE_HOSTS) --per-host $(SCALE_PER_HOST) \
	    --store $$store || { echo "!! bench/scale.py --store $$store failed"; fail=1; }; done; \
	$(PY) bench/harness.py --readme; exit $$fail

bench-table:
	@$(PY) bench/harness.py

# Issue 7: the replica allocation test at full size (64 threads, 10,000 addresses, 200 subnets
# through three controllers on a three-member etcd); the default suite runs 1,000 addresses.
test-etcd-full:
	SDNCTL_REPLICA_THREADS=64 SDNCTL_REPLICA_ADDRESSES=10000 .venv/bin/pytest -s tests/unit/test_etcd_replicas.py -k threads

# Issue 24: two controller replicas on a three-member etcd (client TLS) with the lab's registry,
# no image on their disks, the replica the agents watch killed mid-pull.
test-registry-full:
	SDNCTL_REGISTRY_FULL=1 .venv/bin/pytest -s tests/netns/test_registry_replicas.py

# Reliability soak (issue 10): the long versions of the reliability tests, with their figures
# (-s: printed). 2,000 churn cycles, 20 agent restarts under traffic, 50 controller SIGKILLs
# under allocation load, readiness of an agent adopting 1,000 containers, three rounds of each
# lifecycle race.
SOAK_ENV := SDNCTL_SOAK=1 SDNCTL_SOAK_CYCLES=2000 SDNCTL_RESTARTS=20 SDNCTL_CONTROLLER_KILLS=50

soak:
	$(SOAK_ENV) $(PY) -m pytest -s -p no:cacheprovider tests/netns/test_restart.py \
		tests/netns/test_controller_crash.py tests/netns/test_faults.py \
		tests/netns/test_drift.py tests/netns/test_gc_lab.py tests/netns/test_soak.py \
		tests/netns/test_lifecycle_races.py
