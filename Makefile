# The few verbs a newcomer needs. Every target sets up .venv first when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-packages test lint format run demo bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,flower,bench,tracing,green]'
	touch $(STAMP)

# The Debian packages the suite runs (redis-server, rabbitmq-server, prometheus for promtool,
# tmux, chromium and chromium-driver), installed when missing as root; otherwise it says the
# command to run.
system-packages:
	scripts/ensure-system-packages

# Each pytest process starts its own redis-server (tests/support/redis_server.py) and its
# own RabbitMQ node (tests/support/rabbitmq.py) on free ports; TEST_REDIS_URL and
# TEST_AMQP_URL point it at another disposable server instead.
# Four pytest processes (pytest-xdist), each with its own Redis, vhost and sandbox: the
# tests mostly wait on real servers, so two cores run four at a time (on a quiet 2-core
# host, 320 s against 402 s with three).
# Whole files stay together (--dist loadfile): a file's module fixtures are built once.
test: system-packages install
	$(BIN)/python -m pytest -n 4 --dist loadfile

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# make run OFFLINE=1: the sandbox upstream stands in for the three real ones.
# make run ARGS="--workers 1 --no-flower": any of `python -m ops.run --help`'s options.
run: install
	$(BIN)/python -m ops.run $(if $(filter-out 0,$(OFFLINE)),--offline) $(ARGS)

demo: install
	$(BIN)/python -m ops.demo

bench: install
	$(BIN)/python -m bench

bench-quick: install
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
