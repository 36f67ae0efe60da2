# Every target bootstraps .venv itself: on a fresh machine `make run` and `make test` are enough.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-installed
SRC    := chimneyd clients tests bench

.PHONY: all venv run test lint typecheck unit pytest bench soak fuzz fuzz-team screenshots figure clean

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/chimneyd $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

typecheck: $(STAMP)
	$(BIN)/mypy

# the fast socket-free tests: the NDIS model, every layer kind on its own, the conformance suite
unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# pytest processes for `make test` (pytest-xdist): most tests wait on daemons and sockets, so
# two keep a 2-core machine busy; JOBS=0 runs them one by one in pytest's own process
JOBS ?= 2

# everything CI needs: the default selection and the short soak and bench smoke runs (marker
# `soak`, left out of a plain `pytest`), in one run shared out over JOBS processes
pytest: $(STAMP)
	$(BIN)/pytest -m "soak or not soak" -n $(JOBS) $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

# the web view in headless Chromium (Debian's chromium package): the browser tests, the one
# during a soak included, whose screenshots and measurements land in tests/web/screenshots/
screenshots: $(STAMP)
	$(BIN)/pytest tests/web -s -m "soak or not soak" $(PYTEST_ARGS)
	@ls -1 tests/web/screenshots/

# the README's sequence diagrams (docs/figures/), drawn by chimneyctl trace from a real run
figure: $(STAMP)
	$(BIN)/python -m tests.docs.seed_figure docs/figures

# the tests marked `soak` (deselected from `make test`), then the 10,000-connection soak
soak: $(STAMP)
	$(BIN)/pytest -m soak tests/soak $(PYTEST_ARGS)
	$(BIN)/chimney-soak --spawn --connections 10000 --duration 60 $(ARGS)

# the longer fuzz of faults, update values and call sequences against a real daemon, more
# rounds than `make test` runs, each with a fresh seed (`make test` runs fixed ones); the seed
# is printed, and CHIMNEYD_FUZZ_SEED replays one
fuzz: $(STAMP)
	CHIMNEYD_FUZZ_RANDOM=1 CHIMNEYD_FUZZ_ROUNDS=$${CHIMNEYD_FUZZ_ROUNDS:-10} $(BIN)/pytest -m soak tests/e2e/test_hardening_fuzz.py $(PYTEST_ARGS)

# the same on a team of three NICs under a MUX (active-standby, then least-loaded) as well as
# the default stack (`make test` runs one longer round on each team)
fuzz-team: $(STAMP)
	CHIMNEYD_FUZZ_TOPOLOGIES=all CHIMNEYD_FUZZ_RANDOM=1 CHIMNEYD_FUZZ_ROUNDS=$${CHIMNEYD_FUZZ_ROUNDS:-4} $(BIN)/pytest -m soak tests/e2e/test_hardening_fuzz.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
