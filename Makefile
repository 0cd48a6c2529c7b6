# Every target depends on `setup`; `make test` also installs the system packages the suite needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test lint bench loadtest system-deps node-deps clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py server/fastpath.pyx bench/fastrecv.pyx
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# System packages (Chromium, redis-server, nginx) via apt-get when missing.
system-deps:
	@scripts/ensure-system-packages.sh

# The Node.js `ws` peer that the benchmarks compare against.
node-deps:
	@scripts/ensure-node-peer.sh

# make run [HOST=...] [PORT=...] [ARGS="--rate-limit 0 --log-level debug"]: ARGS go to the server,
# after --host/--port from HOST/PORT (so ARGS win), which win over ROOMCAST_*; with none of them
# the server's defaults, 127.0.0.1:8080. The server prints the URL it really listens on.
run: setup
	@echo "roomcast: open the URL it prints below in a browser, or: npx wscat -c ws://HOST:PORT"
	$(PY) -m server $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT)) $(ARGS)

test: setup system-deps node-deps
	$(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict server bench loadtest tests

# make bench [SCENARIO=fanout|saturate|capacity|joinstorm|twonode] [QUICK=1]
bench: setup node-deps system-deps
	$(PY) -m bench $(if $(SCENARIO),--scenario $(SCENARIO)) $(if $(QUICK),--quick) $(BENCH_ARGS)

# make loadtest [HOST=ws://host:port] [USERS=...] [DURATION=...]
loadtest: setup
	$(PY) -m loadtest.run $(if $(filter ws://% wss://%,$(HOST)),--host $(HOST)) $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
