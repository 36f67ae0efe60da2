# Every target bootstraps .venv itself: on a fresh machine `make run` and `make test` are enough.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-installed
SRC    := chimneyd clients tests bench

.PHONY: all venv run test lint typecheck unit pytest bench soak fuzz fuzz-team screenshots figure \
	compiled test-compiled properties parity clean help

all: test

# pip -q still prints warnings. Two kinds are harmless and said dozens of times by an install:
# - a pip configured with extra indexes that are local directories (`pip config list`, e.g.
#   `extra-index-url = file:///opt/pypi/simple`) warns for each package such a directory
#   lacks, "Location 'file:...' is ignored: it is neither a file nor a directory", and takes
#   the package from the next index: those lines are dropped, every other line of pip's is
#   shown, and pip's own exit status is the recipe's. When pip fails they are shown too: then
#   they may be the cause (the index directory gone, no other index reachable);
# - setuptools says "Editable installation." (a notice, not a problem: the package dirs are
#   chimneyd, clients/chimney_client and bench, so it installs an import finder): filtered by
#   its message in the build's warnings (PYTHONWARNINGS).
PIP_NOISE := ^WARNING: Location 'file:[^']*' is ignored: it is neither a file nor a directory\.$$
PIP_LOG   := $(VENV)/pip-install.log
define pip_install
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install -q $(1) \
		> $(PIP_LOG) 2>&1; rc=$$?; if [ $$rc -eq 0 ]; then grep -v -e "$(PIP_NOISE)" $(PIP_LOG); \
		else cat $(PIP_LOG); fi >&2; exit $$rc
endef

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(call pip_install,--upgrade pip)
	$(call pip_install,-e '.[test]')
	touch $(STAMP)

venv: $(STAMP)

# The optional compiled build (chimneyd/compiled.py): a copy of the checkout in build/compiled/
# in which mypyc has compiled the modules listed in deploy/compiled-modules.txt. COMPILED=1 on
# run, unit, pytest, bench, soak, fuzz or fuzz-team runs it from that copy (its chimneyd first
# on the path, for this process and every daemon it starts), e.g. `make bench COMPILED=1`.
# The modules are compiled again when a source of chimneyd changed; the rest of the copy
# (tests, clients, bench, docs) is refreshed on every such run. Needs a C compiler and
# Python's headers.
COMPILED_DIR     := build/compiled
COMPILED_STAMP   := $(COMPILED_DIR)/.stamp-compiled
COMPILED_MODULES := $(shell grep -v '^\#' deploy/compiled-modules.txt)
COPY_EXCLUDES    := --exclude=./.venv --exclude=./.git --exclude=./build --exclude=__pycache__ \
	--exclude=.mypy_cache --exclude=.pytest_cache --exclude=.ruff_cache --exclude=.hypothesis \
	--exclude=*.egg-info --exclude=./bench/results --exclude=./tests/web/screenshots
$(COMPILED_STAMP): $(STAMP) deploy/compiled-modules.txt deploy/mypyc.ini $(shell find chimneyd -name '*.py')
	rm -rf $(COMPILED_DIR) && mkdir -p $(COMPILED_DIR)
	tar -c $(COPY_EXCLUDES) . | tar -x -C $(COMPILED_DIR)
	cd $(COMPILED_DIR) && $(CURDIR)/$(BIN)/mypyc --config-file deploy/mypyc.ini $(COMPILED_MODULES) \
		> mypyc.log 2>&1 || { tail -30 mypyc.log; exit 1; }
	rm -rf $(COMPILED_DIR)/build  # mypyc's generated C and object files
	touch $@

compiled: $(COMPILED_STAMP)
	tar -c $(COPY_EXCLUDES) --exclude=./chimneyd . | tar -x -C $(COMPILED_DIR)

ifeq ($(COMPILED),1)
export PYTHONPATH := $(CURDIR)/$(COMPILED_DIR)
export CHIMNEYD_EXPECT_BUILD := compiled
IN      := cd $(COMPILED_DIR) &&
BIN_AT  := $(CURDIR)/$(BIN)
DEPS    := compiled
else
IN      :=
BIN_AT  := $(BIN)
DEPS    := $(STAMP)
endif

run: $(DEPS)
	$(IN) $(BIN_AT)/chimneyd $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

typecheck: $(STAMP)
	$(BIN)/mypy

# the fast socket-free tests: the NDIS model, every layer kind on its own, the conformance suite
unit: $(DEPS)
	$(IN) $(BIN_AT)/pytest tests/unit $(PYTEST_ARGS)

# pytest processes for `make test` (pytest-xdist): most tests wait on daemons, sockets and
# soak holds, so two used 0.9 of a 2-core machine's cores and three 1.1 (measured on the whole
# suite: 13 min 25 s on two, 9 min 52 s on three); JOBS=0 runs them one by one in pytest's own
# process
JOBS ?= 3

# everything CI needs: the default selection and the short soak and bench smoke runs (marker
# `soak`, left out of a plain `pytest`), in one run shared out over JOBS processes
pytest: $(DEPS)
	$(IN) $(BIN_AT)/pytest -m "soak or not soak" -n $(JOBS) $(PYTEST_ARGS)

test: lint typecheck pytest

# the whole suite (as `make pytest` selects it) on the compiled build, built first if needed
test-compiled:
	$(MAKE) pytest COMPILED=1

bench: $(DEPS)
	$(IN) $(BIN_AT)/python -m bench $(ARGS)

# the web view in headless Chromium (Debian's chromium package): the browser tests, the one
# during a soak included, whose screenshots and measurements land in tests/web/screenshots/
screenshots: $(STAMP)
	$(BIN)/pytest tests/web -s -m "soak or not soak" $(PYTEST_ARGS)
	@ls -1 tests/web/screenshots/

# the README's sequence diagrams (docs/figures/), drawn by chimneyctl trace from a real run;
# a figure is rewritten only when it shows something new (ARGS=--rewrite rewrites them all)
figure: $(STAMP)
	$(BIN)/python -m tests.docs.seed_figure docs/figures $(ARGS)

# the tests marked `soak` (deselected from `make test`), then the 10,000-connection soak
soak: $(DEPS)
	$(IN) $(BIN_AT)/pytest -m soak tests/soak $(PYTEST_ARGS)
	$(IN) $(BIN_AT)/chimney-soak --spawn --connections 10000 --duration 60 $(ARGS)

# the longer fuzz of faults, update values and call sequences against a real daemon, more
# rounds than `make test` runs, each with a fresh seed (`make test` runs fixed ones); the seed
# is printed, and CHIMNEYD_FUZZ_SEED replays one
fuzz: $(DEPS)
	$(IN) CHIMNEYD_FUZZ_RANDOM=1 CHIMNEYD_FUZZ_ROUNDS=$${CHIMNEYD_FUZZ_ROUNDS:-10} $(BIN_AT)/pytest -m soak tests/e2e/test_hardening_fuzz.py $(PYTEST_ARGS)

# the same on a team of three NICs under a MUX (active-standby, then least-loaded) as well as
# the default stack (`make test` runs one longer round on each team)
fuzz-team: $(DEPS)
	$(IN) CHIMNEYD_FUZZ_TOPOLOGIES=all CHIMNEYD_FUZZ_RANDOM=1 CHIMNEYD_FUZZ_ROUNDS=$${CHIMNEYD_FUZZ_ROUNDS:-4} $(BIN_AT)/pytest -m soak tests/e2e/test_hardening_fuzz.py $(PYTEST_ARGS)

# the property tests (random interleavings on one NIC, on teams and chains, with planted
# bugs) with more examples than `make test` draws: CHIMNEYD_PROPERTY_EXAMPLES each (600)
properties: $(DEPS)
	$(IN) CHIMNEYD_PROPERTY_EXAMPLES=$${CHIMNEYD_PROPERTY_EXAMPLES:-600} $(BIN_AT)/pytest --timeout=3600 tests/integration/test_interleavings.py tests/integration/test_team_interleavings.py $(PYTEST_ARGS)

# every host-stack/offloaded parity scenario against all five modes (`make test` compares a
# chosen subset, tests/e2e/test_parity.py), over JOBS processes
parity: $(DEPS)
	$(IN) CHIMNEYD_PARITY_MATRIX=full $(BIN_AT)/pytest -n $(JOBS) tests/e2e/test_parity.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info

# every target, one line each (README.md says more; tests/docs/test_make_help.py checks that
# the list names them all); it needs no .venv
define HELP_TEXT
make targets (each makes .venv first if it is missing, except help and clean):
  run            start chimneyd on 127.0.0.1:7411 (ARGS="..." passes options)
  test           lint, typecheck and pytest: what CI runs (make with no target)
  lint           ruff check and ruff format --check
  typecheck      mypy
  pytest         the whole suite and the soak smoke tests, on JOBS processes
  unit           tests/unit alone, in one process: the socket-free tests
  venv           make .venv (the package, editable, with its [test] extra)
  bench          the benchmarks (python -m bench ARGS)
  soak           the tests marked soak, then a 10,000-connection soak
  fuzz           a longer fuzz of faults and call sequences, fresh seeds
  fuzz-team      the same on teams of NICs under a MUX
  properties     the property tests with more examples
  parity         every host-stack/offloaded parity scenario in all modes
  figure         redraw the README's sequence diagrams (docs/figures/)
  screenshots    the browser tests of the web view, screenshots kept
  compiled       the mypyc-compiled copy in build/compiled/ (COMPILED=1 uses it)
  test-compiled  the whole suite on the compiled build
  clean          remove .venv, the caches and build/
  help           this list
endef
export HELP_TEXT

help:
	@echo "$$HELP_TEXT"
