# The single entry point: `make demo`, `make test`, `make bench`, `make lint`.
# Everything runs in .venv, made here from a plain Python >= 3.9 and a Rust toolchain.
# Options for the demo, the benchmark and pytest go in ARGS:
#   make demo ARGS="--epochs 50 --plot loss.png"
#   make bench ARGS="--plot bench.png"
#   make test-python ARGS="tests/test_cli.py -x"

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The demo's extras (tqdm, matplotlib for --plot) are here so that the README's commands work;
# safetensors checks that the checkpoint files are readable by the reference implementation.
DEV_PACKAGES := "maturin>=1.9.4,<2" "numpy>=1.21" "pytest>=7" "hypothesis>=6" "ruff>=0.6" "mypy>=1.10" "tqdm>=4" "matplotlib>=3" "ml_dtypes>=0.2" "safetensors>=0.4"
# MPI for adamax_rs.distributed and its tests: mpi4py and the MPICH wheel (mpiexec in .venv/bin).
MPI_PACKAGES := "mpi4py>=4" "mpich"
# torch for adamax_rs.torch and its tests (the CUDA build from the package index, about 5 GB, runs
# on the CPU); expecttest for torch.testing's own error cases, which the tests compare with.
TORCH_PACKAGES := "torch>=2.1" "expecttest"
ARGS ?=
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: all venv build demo test test-rust test-python test-package bench lint format clean

all: test

# pip shows each package it fetches (one line each, no progress bars to fill a log).
# A dropped connection must not fail a build: a CI run once lost torch's triton wheel at 170 MB
# of 286 six times in a row, and another got torch's wheel cut at 530.8 MB of 539.1 on every
# resume for three minutes. So pip resumes a cut download up to 30 times, and if it still
# fails, the whole install is tried again after a pause that doubles each time (30 s to 8 min,
# 15.5 min in all: an outage of the package index outlasts a fixed minute; wheels fetched in
# full stay in pip's cache).
PIP_INSTALL := pip install --progress-bar off --retries 10
PIP_RESUME := --resume-retries 30
# $(call pip_retrying,PYTHON,ARGUMENTS): run `PYTHON -m pip install ARGUMENTS`, 6 tries.
# (Make echoes no recipe line that calls it: the loop prints the pip command itself.)
pip_retrying = pause=30; for try in 1 2 3 4 5 6; do echo '$(1) -m $(PIP_INSTALL) $(2)'; \
	$(1) -m $(PIP_INSTALL) $(2) && break; \
	if [ $$try = 6 ]; then echo ">>> pip failed 6 times: giving up"; exit 1; fi; \
	echo ">>> pip failed (try $$try of 6): trying again in $$pause s"; sleep $$pause; \
	pause=$$((pause * 2)); done

$(VENV)/.ready: pyproject.toml Makefile
	@echo ">>> Making $(VENV) with the dev packages: about 1 min with a warm pip cache, 5 GB and several minutes without (torch)"
	$(PYTHON) -m venv $(VENV)
	@# The venv's own pip may predate --resume-retries (pip 25.1): it only updates pip.
	@$(call pip_retrying,$(PY),--upgrade pip)
	@$(call pip_retrying,$(PY),$(PIP_RESUME) $(DEV_PACKAGES) $(MPI_PACKAGES) $(TORCH_PACKAGES))
	touch $@

venv: $(VENV)/.ready

## build: compile the extension (release) into python/adamax_rs/ and install it in .venv
# maturin develop also pip-installs the package's dependencies, each extra's with a marker
# that does not match (no extra is asked for): pip said "Ignoring ...: markers 'extra == ...'
# don't match" for each. They are all installed above, so that pip runs quiet (PIP_QUIET).
build: venv
	@echo ">>> Building the Rust extension (release) into .venv: about 1.5 min the first time, seconds after"
	PIP_QUIET=1 $(VENV)/bin/maturin develop --release

demo: build
	$(PY) -m adamax_rs demo $(ARGS)

test: test-rust test-python

test-rust:
	cargo test --quiet

test-python: build
	$(PY) -m pytest --quiet $(ARGS)

# The Python benchmark first: it checks its options (such as --plot) before any timing.
bench: build
	$(PY) -m adamax_rs bench $(ARGS)
	cargo bench --bench kernel

# stubtest imports the built extension and compares _core.pyi with what it really has.
lint: build
	cargo fmt --check
	cargo clippy --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check --no-cache python tests
	$(VENV)/bin/ruff format --no-cache --check python tests
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest adamax_rs._core

format: venv
	cargo fmt
	$(VENV)/bin/ruff format python tests
	$(VENV)/bin/ruff check --fix python tests

## test-package: build the wheel, install it in a fresh venv, use it from outside the tree
test-package: venv
	rm -rf dist build/package-venv
	@echo ">>> Building the wheel (release): about 1.5 min unless make build ran before"
	$(VENV)/bin/maturin build --release --out dist
	$(PYTHON) -m venv build/package-venv
	@$(call pip_retrying,build/package-venv/bin/python,dist/*.whl)
	cd /tmp && $(abspath build/package-venv)/bin/python -c "import adamax_rs, numpy as np; \
	    p = adamax_rs.Parameter(np.ones(3, np.float32)); p.grad = np.ones(3, np.float32); \
	    adamax_rs.Adamax([p], lr=0.5).step(); assert (p.data == 0.5).all(), p.data; \
	    assert '/site-packages/' in adamax_rs.__file__, adamax_rs.__file__; \
	    print('wheel works:', adamax_rs.__file__)"
	cd /tmp && $(abspath build/package-venv)/bin/python -m adamax_rs --version

clean:
	rm -rf $(VENV) target build dist python/adamax_rs/*.so
