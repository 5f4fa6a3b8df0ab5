# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv and installs SuperLink with its dependencies on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; on this machine pip takes it from the local disk.
TORCH ?= torch==2.13.0

.PHONY: install demo test test-slow lint clean

$(BIN)/superlink: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/superlink

install: $(BIN)/superlink

demo: install
	$(BIN)/superlink demo --out out/demo

test: install
	$(BIN)/python -m pytest -q

# The browser test drives Debian's chromium through its chromedriver (selenium is in the dev extra).
test-slow: install
	command -v chromedriver >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q chromium chromium-driver; } \
		|| echo "warning: could not install chromium and chromium-driver; the browser test will be skipped"
	$(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) out
