# jacobench — `make bench` measures, `make plan` predicts, `make submit` / `make merge` run a grid in shards,
# `make report` / `make compare` read result files, `make test` checks.
# PYTHON=python3 uses an existing interpreter with the dependencies instead of creating .venv.

PYTHON ?=
# Run settings: one variable per setting of bench/spec/settings.py (a test keeps this list and BENCH_ARGS in step).
GRID ?= default
DEVICES ?=
STRATEGIES ?=
MODEL ?=
IN_DIM ?=
MODE ?=
QUANTITY ?=
DTYPE ?=
COMPILED ?=
THREADS ?=
MEMORY_BUDGET ?=
TIME_BUDGET ?=
PROCESSES ?=
FIDELITY ?=
RUN ?=
SHARD ?=
RESULTS_DIR ?=
RESUME ?=
FORCE ?=
NO_REPORT ?=
# Other commands
RUNS ?=
FROM ?=
JSON ?=
SHARDS ?=
EXECUTOR ?=
PARTITION ?=
GPUS_PER_TASK ?=
CPUS_PER_TASK ?=
TIMEOUT_MIN ?=
PARALLELISM ?=
CPUSETS ?=

VENV := .venv
ifeq ($(strip $(PYTHON)),)
PY := $(VENV)/bin/python
SETUP := $(VENV)/.installed
else
PY := $(PYTHON)
SETUP :=
endif

yes = $(filter 1 yes true,$(1))
BENCH_ARGS := --grid '$(GRID)' \
	$(if $(DEVICES),--devices '$(DEVICES)') \
	$(if $(STRATEGIES),--strategies '$(STRATEGIES)') \
	$(if $(MODEL),--model '$(MODEL)') \
	$(if $(IN_DIM),--in-dim '$(IN_DIM)') \
	$(if $(MODE),--mode '$(MODE)') \
	$(if $(QUANTITY),--quantity '$(QUANTITY)') \
	$(if $(DTYPE),--dtype '$(DTYPE)') \
	$(if $(COMPILED),--compiled '$(COMPILED)') \
	$(if $(THREADS),--threads '$(THREADS)') \
	$(if $(MEMORY_BUDGET),--memory-budget '$(MEMORY_BUDGET)') \
	$(if $(TIME_BUDGET),--time-budget '$(TIME_BUDGET)') \
	$(if $(PROCESSES),--processes '$(PROCESSES)') \
	$(if $(FIDELITY),--fidelity '$(FIDELITY)') \
	$(if $(RUN),--run '$(RUN)') \
	$(if $(SHARD),--shard '$(SHARD)') \
	$(if $(RESULTS_DIR),--results-dir '$(RESULTS_DIR)') \
	$(if $(call yes,$(RESUME)),--resume) \
	$(if $(call yes,$(FORCE)),--force) \
	$(if $(call yes,$(NO_REPORT)),--no-report)

.PHONY: setup setup-jax bench plan merge submit report compare fidelity test test-fast lint clean gpu-quick

setup: $(SETUP)

# The JAX peers: jax and folx (the `jax` extra) and plugins/jacobench-jax, registered through its entry points.
# `make test` installs them too, so the peers are tested (without them their tests skip, saying why).
ifeq ($(strip $(PYTHON)),)
JAX_SETUP := $(VENV)/.jax-installed
else
JAX_SETUP :=
endif
setup-jax: $(SETUP) $(JAX_SETUP)

$(VENV)/.jax-installed: $(VENV)/.installed plugins/jacobench-jax/pyproject.toml
	$(VENV)/bin/python -m pip install --quiet -e '.[jax]' -e plugins/jacobench-jax
	@touch $@

# Re-run only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	@touch $@

bench: $(SETUP)
	@$(PY) -m bench run $(BENCH_ARGS)

# What a run will do and how long it will take; nothing is measured. FROM=results/<run> predicts from that run,
# SHARDS=N shows the split, JSON=1 prints one JSON object.
plan: $(SETUP)
	@$(PY) -m bench plan $(BENCH_ARGS) $(if $(FROM),--from '$(FROM)') $(if $(SHARDS),--shards '$(SHARDS)') \
		$(if $(call yes,$(JSON)),--json)

# The shards results/$(RUN).shard-k-of-N of one plan, joined into results/$(RUN).
merge: $(SETUP)
	@$(PY) -m bench merge '$(RUN)' $(if $(RESULTS_DIR),--results-dir '$(RESULTS_DIR)') \
		$(if $(call yes,$(NO_REPORT)),--no-report)

# SHARDS=N shards as one job array (submitit; EXECUTOR=slurm or local), one shard per task, then the merge.
submit: $(SETUP)
	@$(PY) -m bench submit $(BENCH_ARGS) $(if $(SHARDS),--shards '$(SHARDS)') \
		$(if $(EXECUTOR),--executor '$(EXECUTOR)') $(if $(PARTITION),--partition '$(PARTITION)') \
		$(if $(GPUS_PER_TASK),--gpus-per-task '$(GPUS_PER_TASK)') $(if $(CPUS_PER_TASK),--cpus-per-task '$(CPUS_PER_TASK)') \
		$(if $(TIMEOUT_MIN),--timeout-min '$(TIMEOUT_MIN)') $(if $(PARALLELISM),--parallelism '$(PARALLELISM)') \
		$(if $(CPUSETS),--cpusets '$(CPUSETS)')

report: $(SETUP)
	@$(PY) -m bench report $(if $(RUN),'$(RUN)',latest)

compare: $(SETUP)
	@$(PY) -m bench compare $(RUNS)

fidelity: $(SETUP)
	@$(PY) -m bench fidelity $(if $(RUN),'$(RUN)',latest)

# Every test (what CI runs: .ci/run), the JAX peers' included; test-fast leaves out those marked slow (another
# Python process, compiling).
test: $(SETUP) $(JAX_SETUP)
	$(PY) -m pytest -ra --durations=15

test-fast: $(SETUP)
	$(PY) -m pytest -ra -m "not slow"

lint: $(SETUP)
	$(PY) -m ruff check .

# One command for a lent GPU machine (no package index): the quick grid on cpu and cuda (eager strategies: compiling
# for CUDA takes longer than a lent machine's minutes), written under $OUT as it goes, packed for the trip back.
#   make gpu-quick PYTHON=python3 OUT=$OUT
GPU_RUN ?= gpu-quick
OUT ?= .
gpu-quick: $(SETUP)
	-@$(PY) -m bench run --grid quick --devices cpu,cuda --compiled 0 --run '$(GPU_RUN)' --results-dir '$(OUT)/results' \
		$(if $(call yes,$(FORCE)),--force)
	tar czf '$(OUT)/$(GPU_RUN).tar.gz' -C '$(OUT)' results/'$(GPU_RUN)' plots/'$(GPU_RUN)'

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
