# Users' own data: check what the workers would read before training on it. Included by the main Makefile
# (`-include mk/*.mk`), which defines VENV, PY and `venv`.
#
#   make data-check                                   every worker of config.yaml
#   make data-check CONFIG=examples/own-data/config.yaml
#
# Prints per node: files, runs, rows, the clock (span, interval, gaps, duplicates, out-of-order rows), each column's
# type, range, missing share and levels, the label balance, which rows train and the model's input width; exits 1
# with every problem listed (file:line and the offending value) when a worker could not train on its data.

VENV ?= .venv
PY ?= $(VENV)/bin/python
CONFIG ?=

.PHONY: data-check

data-check: venv  ## read every worker's data as training will; list every problem (exit 1 when any)
	$(PY) -m services.cli $(if $(CONFIG),--config $(CONFIG)) data check
