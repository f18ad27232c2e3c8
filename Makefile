# Two commands do all the set-up:
#   make run [BACKEND=http://host:port]   Envoy + buffered-stream on http://127.0.0.1:10000
#                                          (a built-in demo backend when BACKEND is not given)
#   make test                              install what the tests need, run the whole suite
#   make test-live                         the same against a real llama.cpp server (built once)
# Every install comes from the hash-pinned lock files in requirements/ (`make lock` refreshes
# them); `make test-latest` runs the suite on the newest versions pyproject.toml allows.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCKS := requirements
PIP_LOCKED = -m pip install --quiet --require-hashes
# The package itself, built with the locked setuptools (no unpinned build environment).
PIP_SELF = -m pip install --quiet --no-deps --no-build-isolation -e .
SOURCES := pyproject.toml setup.py filter/buffered_stream/core/_runs.c

.PHONY: run test test-live test-latest lock record-llama bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: $(SOURCES) $(LOCKS)/run.lock | $(BIN)/python
	$(BIN)/python $(PIP_LOCKED) -r $(LOCKS)/run.lock
	$(BIN)/python $(PIP_SELF)
	touch $@

# Besides the venv, the tests run promtool on the shipped alerting rules (Debian's prometheus
# package; as root it is installed here when missing).
INSTALL_PROMTOOL = command -v promtool >/dev/null || { apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
$(VENV)/.test-installed: $(SOURCES) $(LOCKS)/test.lock | $(BIN)/python
	$(INSTALL_PROMTOOL)
	$(BIN)/python $(PIP_LOCKED) -r $(LOCKS)/test.lock
	$(BIN)/python $(PIP_SELF)
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/buffered-stream run $(if $(BACKEND),--backend $(BACKEND)) $(ARGS)

# Lint, format and type checks first (ruff; mypy strict on core/ and schemas/), then the suite.
LINT = $(1)/ruff check filter tests bench && $(1)/ruff format --check filter tests bench && $(1)/mypy
test: $(VENV)/.test-installed
	$(call LINT,$(BIN))
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The newest releases pyproject.toml allows, in a venv of their own (not in CI): drift shows here
# before users meet it.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade pip
	$(INSTALL_PROMTOOL)
	.venv-latest/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[test,fast]'
	$(call LINT,.venv-latest/bin)
	.venv-latest/bin/python -m pytest $(PYTEST_ARGS)

# Refresh every lock from pyproject.toml with the locked uv; run.lock and runtime.lock take the
# versions test.lock chose, so what the tests ran is what ships.
UV_COMPILE = .venv-tools/bin/uv pip compile --quiet --generate-hashes --universal --python-version 3.11 \
	--custom-compile-command 'make lock'
lock:
	[ -x .venv-tools/bin/uv ] || { $(PYTHON) -m venv .venv-tools && \
	  .venv-tools/bin/python $(PIP_LOCKED) -r $(LOCKS)/tools.lock; }
	$(UV_COMPILE) $(LOCKS)/tools.in -o $(LOCKS)/tools.lock
	$(UV_COMPILE) --upgrade pyproject.toml $(LOCKS)/build.in --extra test -o $(LOCKS)/test.lock
	$(UV_COMPILE) pyproject.toml $(LOCKS)/build.in --extra run --extra fast -c $(LOCKS)/test.lock -o $(LOCKS)/run.lock
	$(UV_COMPILE) pyproject.toml $(LOCKS)/build.in --extra fast -c $(LOCKS)/test.lock -o $(LOCKS)/runtime.lock

# The first run builds llama.cpp's llama-server from source into ~/.cache/buffered-stream.
test-live: $(VENV)/.test-installed
	$(BIN)/python -m pytest -m live $(PYTEST_ARGS)

record-llama: $(VENV)/.test-installed
	PYTHONPATH=tests:filter $(BIN)/python -m support.record_llama $(ARGS)

bench: $(VENV)/.test-installed
	$(BIN)/python bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) .venv-latest .venv-tools .pytest_cache .hypothesis
