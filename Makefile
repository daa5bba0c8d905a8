# `make help` lists the targets. Everything sets itself up on first use.
VENV   := .venv
PY     := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SLURM  := /usr/sbin/slurmctld
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
ARGS   ?=
# pytest-xdist workers: one per core, at most 4 (each holds a warm interpreter of its own: tests/zygote.py)
WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))
XDIST  := -n $(WORKERS) --dist loadgroup

.DEFAULT_GOAL := help
.PHONY: help setup train test test-quick lint format clean clean-outputs

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup: $(VENV)/.installed $(FMNIST) $(SLURM) ## create .venv with the exact dependencies of constraints.txt, install Fashion-MNIST and SLURM

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

$(FMNIST):
	$(APT) dataset-fashion-mnist

$(SLURM): # the tests start a one-node SLURM of their own (tests/test_slurm.py)
	$(APT) slurm-wlm munge

train: setup ## the Fashion-MNIST speedrun: 94% test top-1 in 40 TFLOP, minutes on a laptop CPU (overrides: ARGS="key=value ...")
	$(PY) -m cnnbench.train experiment=fmnist_speedrun $(ARGS)

test: setup ## run the whole test suite (what CI runs); it names its 15 slowest tests
	$(PY) -m pytest -q $(XDIST) --durations=15

test-quick: setup ## the tests that start no subprocess run, cluster or GPU: about 2.5 minutes on 2 cores (all: 16)
	$(PY) -m pytest -q $(XDIST) -m "not slow and not cluster and not gpu"

LINTED := cnnbench tests scripts hydra_plugins conf

lint: setup ## ruff: pyflakes, pycodestyle, import order, and the formatting `make format` gives (pyproject.toml)
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)

format: setup ## ruff format: rewrite the Python files in the project's one style (and sort imports)
	$(PY) -m ruff check --select I --fix -q $(LINTED)
	$(PY) -m ruff format -q $(LINTED)

clean: ## remove the venv and the caches; the runs under outputs/ stay
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-outputs: ## delete every run under outputs/ (checkpoints, metrics, sweeps): there is no undo
	rm -rf outputs
