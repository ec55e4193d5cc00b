# The README's two commands: `make run` (set up + run the pipeline on the embedded
# default, resuming whatever an interrupted run left) and `make test` (set up + run
# the whole test suite; .ci/run calls it).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# A machine-wide pip constraint (some images cap torch below our lock) must not
# override the lock; /dev/null as the constraint file keeps every other pip setting.
export PIP_CONSTRAINT := /dev/null
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup run test evaluate reports bench bench-gpu gpu-check mutants clean

$(VENV)/.installed: envs/requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r envs/requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/normbench run

# the tests in parallel, a file per worker at a time (a file's module fixtures are built once);
# TEST_WORKERS=0 runs them in this process
TEST_WORKERS ?= logical
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# the report card of one normalizer: make evaluate NORM=mynorms.py:RMSNorm2d (or NORM=gn, …)
evaluate: setup
	$(BIN)/normbench evaluate $(NORM)

reports: setup
	$(BIN)/normbench report --results results --out reports

bench: setup
	$(BIN)/normbench bench

bench-gpu: setup
	$(BIN)/normbench bench --device cuda

# one prepared command that measures a GPU into gpu-check/ (about 8 min on one GPU; without CUDA a small
# CPU version); CPU_RESULTS: a CPU run's results folder to compare verdicts with (default ./results)
gpu-check: setup
	$(BIN)/normbench gpu-check $(if $(CPU_RESULTS),--cpu-results $(CPU_RESULTS))

# Mutation testing of the normalizers, their layers and the probes (tens of minutes; not part of
# `make test`).  mutmut wants the package at the top of its folder: it runs in .mutmut/.
mutants: setup
	$(BIN)/pip install -q mutmut==3.8.1
	rm -rf .mutmut && mkdir .mutmut && cp -r workflow/normbench tests .mutmut/ && cp tests/mutmut/setup.cfg .mutmut/
	cd .mutmut && ../$(BIN)/mutmut run; ../$(BIN)/mutmut results

clean:
	rm -rf results reports/*/ reports/index.md reports/report.html .snakemake logs benchmarks .mutmut gpu-check
