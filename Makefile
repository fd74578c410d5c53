# The single entry point: `make demo`, `make test`, `make bench`, `make lint`.
# Everything runs in .venv, made here from a plain Python >= 3.9 and a Rust toolchain.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEV_PACKAGES := "maturin>=1.9.4,<2" "numpy>=1.21" "pytest>=7" "hypothesis>=6"
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: all venv build demo test test-rust test-python bench lint format clean

all: test

$(VENV)/.ready: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(DEV_PACKAGES)
	touch $@

venv: $(VENV)/.ready

## build: compile the extension (release) into python/adamax_rs/ and install it in .venv
build: venv
	$(VENV)/bin/maturin develop --release --quiet

demo: build
	$(PY) -m adamax_rs demo

test: test-rust test-python

test-rust:
	cargo test --quiet

test-python: build
	$(PY) -m pytest --quiet

bench: build
	cargo bench --bench kernel
	$(PY) -m adamax_rs bench

lint: venv
	cargo fmt --check
	cargo clippy --all-targets --features python -- -D warnings

format:
	cargo fmt

clean:
	rm -rf $(VENV) target python/adamax_rs/*.so
