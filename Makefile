# Every target sets up what it needs: a virtualenv in .venv with the project and PyTorch 2.13.0 (CPU).
# Elsewhere than the development machines, get the CPU build of torch with
#   make TORCH_INDEX=https://download.pytorch.org/whl/cpu <target>
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_INDEX ?=
PYTEST_ARGS ?=
CONFIG ?=
# onnxruntime's usage telemetry would send events off the machine
export ORT_DISABLE_TELEMETRY := 1

.PHONY: venv run test clean-state clean
.DEFAULT_GOAL := run

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch alone and first, pinned: a later resolution then keeps this CPU wheel instead of a CUDA build
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[test,report]'
	touch $@

venv: $(VENV)/.installed

run: venv  ## train the federation on this machine, print detection figures, serve /detect until Ctrl-C (CONFIG=examples/….yaml)
	$(PY) -m services.cli run $(if $(CONFIG),--config $(CONFIG))

test: venv lint  ## lint and type check, then the whole test suite (real services on loopback, real SKAB data)
	$(PY) -m pytest $(PYTEST_ARGS)

clean-state:  ## forget the persisted run (aggregator and worker state)
	rm -rf state

clean: clean-state
	rm -rf $(VENV) build .pytest_cache

-include mk/*.mk
