# Tollgate: the project's vocabulary. Every target sets up what it needs on a fresh machine (only Python 3.11+).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000

.PHONY: run test test-unit lint format bench soak clean

$(VENV)/.base-installed: requirements/base.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/base.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.base-installed requirements/dev.txt
	$(PY) -m pip install --quiet -r requirements/dev.txt
	touch $@

## run: migrate, create a demo key, start the bundled fake upstream if OPENAI_API_KEY is unset, serve on :$(PORT)
run: $(VENV)/.base-installed
	$(PY) scripts/run.py --port $(PORT)

## test: the whole suite (Postgres/Redis when DATABASE_URL/REDIS_URL are set, SQLite and no Redis otherwise)
test: $(VENV)/.dev-installed
	$(PY) -m pytest $(PYTEST_ARGS)

## test-unit: the server-free tier (tests/unit: no database, Redis or subprocess), in seconds; `make test` runs it too
test-unit: $(VENV)/.dev-installed
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

## lint: ruff (lint + format check), mypy (pyproject.toml; incremental cache in .mypy_cache), migrations in sync,
## the Dockerfile
lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) manage.py makemigrations --check --dry-run
	$(VENV)/bin/hadolint Dockerfile

format: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## bench: the performance harness (bench/README in the main README); results in bench/results/
bench: $(VENV)/.dev-installed
	$(PY) bench/run.py $(BENCH_ARGS)

## soak: 10 minutes of mixed load against two workers; RSS, fds, connections and errors reported
soak: $(VENV)/.dev-installed
	$(PY) -m pytest -m soak -p no:randomly tests/test_soak.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) db.sqlite3 .test-db.sqlite3* staticfiles .pytest_cache .mypy_cache
