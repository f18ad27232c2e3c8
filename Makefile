# Two commands do all the set-up:
#   make run [BACKEND=http://host:port]   Envoy + buffered-stream on http://127.0.0.1:10000
#                                          (a built-in demo backend when BACKEND is not given)
#   make test                              install what the tests need, run the whole suite
#   make test-live                         the same against a real llama.cpp server (built once)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test test-live record-llama bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml setup.py filter/buffered_stream/core/_runs.c | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[run,fast]'
	touch $@

$(VENV)/.test-installed: pyproject.toml setup.py filter/buffered_stream/core/_runs.c | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/buffered-stream run $(if $(BACKEND),--backend $(BACKEND)) $(ARGS)

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The first run builds llama.cpp's llama-server from source into ~/.cache/buffered-stream.
test-live: $(VENV)/.test-installed
	$(BIN)/python -m pytest -m live $(PYTEST_ARGS)

record-llama: $(VENV)/.test-installed
	PYTHONPATH=tests:filter $(BIN)/python -m support.record_llama $(ARGS)

bench: $(VENV)/.test-installed
	$(BIN)/python bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
