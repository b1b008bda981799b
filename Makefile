# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench lock audit clean

# Every version comes from constraints.txt (the lock: `make lock` writes it), so two installs get the same packages.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build where one is on disk (CI), the normal build elsewhere; later deps accept it as is.
	$(BIN)/pip install -q -c constraints.txt torch
	# slack, telegram: the chat faces and their tests (bolt, slack-sdk, aiohttp; aiogram)
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,slack,telegram]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/build_customer_service.py
	$(BIN)/tuneloop demo

# Two test processes (pytest-xdist), a file each at a time: much of the suite waits on workers, servers and
# subprocesses, so two keep both cores busy. Tests of one file share fixtures and their Redis database.
TEST_PROCESSES ?= 2
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(TEST_PROCESSES) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/dedup.py
	$(BIN)/python bench/synth.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/peer.py
	$(BIN)/python bench/eval.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/bot.py
	$(BIN)/python bench/loop.py

# After changing pyproject.toml's dependencies: resolve them all again, then run the tests on what it pinned.
lock: $(STAMP)
	$(BIN)/python .ci/lock.py

# The lock against the advisory database: a known vulnerability fails; an unreachable database is said, not failed.
audit: $(STAMP)
	$(BIN)/python .ci/audit.py

clean:
	rm -rf $(VENV) .tuneloop demo-out
