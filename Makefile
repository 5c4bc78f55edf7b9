# The two commands: `make demo` (the main job) and `make test` (the whole suite). Both set up a venv
# in .venv on first use; nothing else is needed but Python >= 3.11 and pip.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.seawall-installed

.PHONY: demo test run lint bench system-tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/seawall demo

run: $(STAMP)
	$(BIN)/seawall run

# Tools some tests drive for real (promtool, redis-server, redis-cli, redis-sentinel): installed when missing
# and possible.
system-tools:
	@sh scripts/ensure-system-tools.sh

test: $(STAMP) system-tools
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check proxy tests benchmarks
	$(BIN)/ruff format --check proxy tests benchmarks
	$(BIN)/mypy

# On demand, not in CI; figures and how to read them: BENCHMARKS.md (overhead.py needs `wrk`).
bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/ratelimit_burst.py
	$(BIN)/python benchmarks/ratelimit_goodput.py
	$(BIN)/python benchmarks/replicas_redis.py
	$(BIN)/python benchmarks/soak_memory.py
	$(BIN)/python benchmarks/ratelimit_network.py
	$(BIN)/python benchmarks/ratelimit_fairness.py
	$(BIN)/python benchmarks/ratelimit_learning.py
	$(BIN)/python benchmarks/redis_cluster.py
	$(BIN)/python benchmarks/market_data.py
	$(BIN)/python benchmarks/streams.py

clean:
	rm -rf $(VENV) .venv-connector .pytest_cache .mypy_cache .ruff_cache
