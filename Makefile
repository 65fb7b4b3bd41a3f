# The two commands a newcomer runs: `make demo` and `make test`. Both install what
# they need: uv (pinned, from PyPI) into .tools/, then the locked environment.
UV_VERSION := 0.13.8
UV := .tools/bin/uv
PY := .venv/bin/python
# Use this machine's Python 3.11; never download an interpreter.
export UV_PYTHON_DOWNLOADS := never
# Compile every installed module once, at install: where PYTHONDONTWRITEBYTECODE is set
# no process ever writes a .pyc, and each Airflow component, task and CLI call would
# compile Airflow again (`airflow version`: 4.2 s without, 1.7 s with).
export UV_COMPILE_BYTECODE := 1

.PHONY: demo test lint format up up-celery validate timeline compose-tool sandbox-tool browser-tool bench clean

$(UV):
	python3 -m pip install --quiet --disable-pip-version-check --target .tools uv==$(UV_VERSION)

.venv/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen
	touch $@

demo: .venv/.synced sandbox-tool  ## run the whole MAI 2021 timeline end to end on the embedded stack
	.venv/bin/mai-ops demo

test: .venv/.synced compose-tool sandbox-tool browser-tool  ## lint, then every test
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	$(PY) -m pytest

up: .venv/.synced sandbox-tool  ## Airflow UI on http://localhost:8080 with the embedded S3 and SMTP servers
	$(PY) -m mai_ops.dev.stack

# The same on the production path: CeleryExecutor, this machine's PostgreSQL and Redis.
up-celery: .venv/.synced sandbox-tool  ## make up on CeleryExecutor, PostgreSQL and Redis, two Celery workers
	$(PY) -m mai_ops.dev.stack --executor celery

validate: .venv/.synced
	.venv/bin/mai-ops validate

timeline: .venv/.synced
	.venv/bin/mai-ops timeline mai2021

bench: .venv/.synced
	$(PY) bench/parse_time.py

format: .venv/.synced
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

# The compose file is validated offline with Debian's docker-compose (no engine needed).
compose-tool:
	@command -v docker-compose >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; }

# Participants' models run in a bubblewrap sandbox (docs/security.md); prlimit and setpriv
# come with util-linux.
sandbox-tool:
	@command -v bwrap >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null; }

# The stack test opens the Airflow UI's trigger form in headless Chromium (tests/browser.py).
browser-tool:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

clean:
	rm -rf var .pytest_cache .ruff_cache
