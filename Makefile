# Two commands matter: `make demo` (the main job) and `make test` (everything CI checks).
# Each sets up what it needs: a virtual environment in .venv with this package installed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-django lint chromium bench bench-quick bench-pg faults storage-faults faults-network clean

# The Django backend (message_queue_sqlite/contrib/django) is tested in a venv of its own:
# Django 6 needs Python >= 3.12, and the main venv's Python may be older. DJANGO_PYTHON is a
# 3.12+ interpreter (pyenv's 3.12.1 here); Django is pinned to the version the README names.
DJANGO_PYTHON  ?= $(firstword $(wildcard /root/.pyenv/versions/3.12.1/bin/python3.12) python3.12)
DJANGO_VERSION := 6.1.3
DJANGO_VENV    := .venv-django
DJANGO_STAMP   := $(DJANGO_VENV)/.installed

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

$(DJANGO_STAMP): pyproject.toml Makefile
	$(DJANGO_PYTHON) -m venv $(DJANGO_VENV)
	$(DJANGO_VENV)/bin/python -m pip install -q --upgrade pip
	$(DJANGO_VENV)/bin/python -m pip install -q -e '.[django]' 'Django==$(DJANGO_VERSION)' \
		'psycopg[binary]>=3.1' 'pytest>=7' 'pytest-timeout>=2.1'
	touch $(DJANGO_STAMP)

test-django: $(DJANGO_STAMP)
	$(DJANGO_VENV)/bin/python -m pytest tests/django_backend -W 'error:Binding:DeprecationWarning'

test: lint chromium test-django
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(DJANGO_VENV) .pytest_cache .ruff_cache .import_linter_cache *.egg-info

# The benchmark (bench/README.md): `make bench` compares this package with its peers and a
# raw sqlite3 loop (~15-20 min; peers go into bench/.venvs), then the seed's own usage (a
# callback on every send, bench/seed_usage.py, ~1 min); `make bench-quick` is a seconds-long
# regression guard of this package against the raw loop, both ways.
bench:
	$(PYTHON) bench/run.py
	$(PYTHON) bench/seed_usage.py --json bench/results/seed_usage.json --markdown bench/results/seed_usage.md
	$(PYTHON) bench/pg.py

# The PostgreSQL part (bench/results/pg.md): ours vs a raw psycopg loop, pgqueuer and
# procrastinate against the server at 127.0.0.1:5432 (~3-5 min; peers in bench/.venvs/pg-peers).
bench-pg:
	$(PYTHON) bench/pg.py

bench-quick:
	$(PYTHON) bench/run.py --quick
	$(PYTHON) bench/seed_usage.py --quick

# The fault-injection runner (README, "Proof"): kills workers and senders at random and
# checks from the files that nothing was lost or stuck. `--short` is what the tests run.
faults: $(STAMP)
	$(BIN)/python scripts/faults.py

# The storage-fault mode (README, "Proof"): the queue on a small tmpfs filled to ENOSPC, and
# EIO/EROFS injected under SQLite by an LD_PRELOAD shim built with cc (root; ~3-4 min).
storage-faults: $(STAMP)
	$(BIN)/python scripts/storage_faults.py

# The network fault runner (README, "Proof"): worker and sender hosts behind loopback proxies that
# partition, lose and delay; kills, clock steps, fast and immediate restarts of a PostgreSQL of its own.
faults-network: $(STAMP)
	$(BIN)/python scripts/faults_network.py
