# Two commands matter: `make demo` (the main job) and `make test` (everything CI checks).
# Each sets up what it needs: a virtual environment in .venv with this package installed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint chromium bench bench-quick bench-pg faults clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m message_queue_sqlite demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The dashboard's browser tests drive Debian's Chromium (Playwright's own browser download
# does not work here); CI runs as root with apt, so install it when it is missing.
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

test: lint chromium
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache *.egg-info

# The benchmark (bench/README.md): `make bench` compares this package with its peers and a
# raw sqlite3 loop (~15-20 min; peers go into bench/.venvs); `make bench-quick` is a
# seconds-long regression guard of this package against the raw loop.
bench:
	$(PYTHON) bench/run.py
	$(PYTHON) bench/pg.py

# The PostgreSQL part (bench/results/pg.md): ours vs a raw psycopg loop, pgqueuer and
# procrastinate against the server at 127.0.0.1:5432 (~3-5 min; peers in bench/.venvs/pg-peers).
bench-pg:
	$(PYTHON) bench/pg.py

bench-quick:
	$(PYTHON) bench/run.py --quick

# The fault-injection runner (README, "Proof"): kills workers and senders at random and
# checks from the files that nothing was lost or stuck. `--short` is what the tests run.
faults: $(STAMP)
	$(BIN)/python scripts/faults.py
