# Two commands do all the set-up on a fresh clone: `make demo` and `make test` (`make bench` measures).
# Both create .venv (reused when present), install riskstream with pinned dependencies and fetch the jars
# in pom-deps.txt through Maven (idempotent). The tests and the demo start the Kafka broker themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.riskstream-installed

.PHONY: setup jars demo test test-all bench stack-up stack-down clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[train,test,bench,review]'
	@touch $(STAMP)

setup: $(STAMP) jars

jars: $(STAMP)
	$(BIN)/riskstream jars

demo: setup
	$(BIN)/riskstream demo $(DEMO_ARGS)

test: setup
	$(BIN)/python -m pytest -q $(TEST_ARGS)

bench: setup
	$(BIN)/riskstream bench --json $(BENCH_ARGS)

test-all: setup
	$(BIN)/python -m pytest -q -m '' $(TEST_ARGS)

stack-up: setup
	$(BIN)/riskstream stack up

stack-down:
	$(BIN)/riskstream stack down

clean: stack-down
	rm -rf .riskstream
