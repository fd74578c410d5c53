# The single entry point: `make demo`, `make test`, `make bench`, `make lint`.
# Everything runs in .venv, made here from a plain Python >= 3.9 and a Rust toolchain.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEV_PACKAGES := "maturin>=1.9.4,<2" "numpy>=1.21" "pytest>=7" "hypothesis>=6" "ruff>=0.6" "mypy>=1.10" "tqdm>=4" "ml_dtypes>=0.2"
# MPI for adamax_rs.distributed and its tests: mpi4py and the MPICH wheel (mpiexec in .venv/bin).
MPI_PACKAGES := "mpi4py>=4" "mpich"
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: all venv build demo test test-rust test-python test-package bench lint format clean

all: test

$(VENV)/.ready: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(DEV_PACKAGES) $(MPI_PACKAGES)
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
	$(VENV)/bin/ruff check --no-cache python tests
	$(VENV)/bin/ruff format --no-cache --check python tests
	$(VENV)/bin/mypy

format: venv
	cargo fmt
	$(VENV)/bin/ruff format python tests
	$(VENV)/bin/ruff check --fix python tests

## test-package: build the wheel, install it in a fresh venv, use it from outside the tree
test-package: venv
	rm -rf dist build/package-venv
	$(VENV)/bin/maturin build --release --quiet --out dist
	$(PYTHON) -m venv build/package-venv
	build/package-venv/bin/python -m pip install --quiet dist/*.whl
	cd /tmp && $(abspath build/package-venv)/bin/python -c "import adamax_rs, numpy as np; \
	    p = adamax_rs.Parameter(np.ones(3, np.float32)); p.grad = np.ones(3, np.float32); \
	    adamax_rs.Adamax([p], lr=0.5).step(); assert (p.data == 0.5).all(), p.data; \
	    assert '/site-packages/' in adamax_rs.__file__, adamax_rs.__file__; \
	    print('wheel works:', adamax_rs.__file__)"
	cd /tmp && $(abspath build/package-venv)/bin/python -m adamax_rs --version

clean:
	rm -rf $(VENV) target build dist python/adamax_rs/*.so
