# mlmotex-hpc: two commands do everything.
#   make demo   set up (if needed), run the α-Keggin example on 2 MPI ranks, print the motif
#   make test   set up (if needed), run the test suite
# Set-up (scripts/bootstrap.sh) installs what is missing and is skipped when nothing changed.

SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.bootstrap-done
NP    ?= 2

# Open MPI refuses root without these two, and more ranks than cores without the third.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export OMPI_MCA_rmaps_base_oversubscribe := 1
# One numba cache folder per checkout; ranks share it.
# keyed by the sources: numba does not notice when a jitted function a cached one calls
# (in another file) has changed
export NUMBA_CACHE_DIR := $(CURDIR)/.venv/numba-cache/$(shell cat mlmotex_hpc/*.py mlmotex_hpc/*/*.py | sha1sum | cut -c1-12)

# --bind-to none: rank 0 trains XGBoost on every core while the other ranks sleep.
MPIRUN ?= mpirun --bind-to none

.PHONY: demo test check docs bench lint clean setup

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh
	touch $@

demo: $(STAMP)
	$(MPIRUN) -n $(NP) $(VENV)/bin/mlmotex-hpc run configs/keggin.yaml

# The report is also checked in a headless browser: Debian's chromium, installed here
# (as root on Debian, as in CI) because only the tests need it. There its test is
# required (MLMOTEX_REQUIRE_BROWSER=1: it fails rather than skips without chromium);
# elsewhere it runs when chromium is on PATH and is skipped, with the reason, when not.
# Likewise the cases that mount a small tmpfs (a disk that fills up): required as root
# on Debian (MLMOTEX_REQUIRE_MOUNT=1), skipped with the reason where mounting is not allowed.
# And the job scripts run by a real SLURM (tests/test_slurm.py): Debian's SLURM and munge,
# installed here as root on Debian; the tests start a private one-node cluster of their
# own and stop it (MLMOTEX_REQUIRE_SLURM=1: required there, skipped with the reason elsewhere).
TEST_PACKAGES := chromium slurmctld slurmd slurm-client munge
test: $(STAMP)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  { command -v chromium && command -v sbatch && test -x /usr/sbin/slurmctld \
	    && test -x /usr/sbin/slurmd && test -x /usr/sbin/munged; } >/dev/null || { \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq --no-install-recommends $(TEST_PACKAGES) >/dev/null 2>&1 \
	    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
	         $(TEST_PACKAGES) >/dev/null; }; }; \
	  export MLMOTEX_REQUIRE_BROWSER=1 MLMOTEX_REQUIRE_MOUNT=1 MLMOTEX_REQUIRE_SLURM=1; \
	fi; \
	$(PY) -m pytest -q -ra

# The fast tier, for use while developing (about 3 minutes on 2 cores): the unit tests and
# a few small MPI runs; the tests marked slow (pyproject.toml) are left to `make test`.
check: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider

# The documentation site (docs/, Sphinx), warnings as errors; open docs/_build/html/index.html.
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "docs/_build/html/index.html"

# Fit throughput with its answers checked (benchmarks/bench_fit.py) and the scheduler's
# capacity (benchmarks/bench_scheduler.py); PATH so that
# the benchmark's mpirun jobs find this venv's mlmotex-hpc.
bench: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) benchmarks/bench_fit.py
	$(PY) benchmarks/bench_refine.py
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) benchmarks/bench_scheduler.py

lint: $(STAMP)
	$(VENV)/bin/ruff check mlmotex_hpc tests benchmarks

clean:
	rm -rf out build *.egg-info .pytest_cache
