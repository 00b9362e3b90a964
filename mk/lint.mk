# Lint and type check; their settings are in pyproject.toml ([tool.ruff], [tool.mypy]). `make test` runs this first.
# Included by the main Makefile (`-include mk/*.mk`), which defines VENV, PY and the `venv` target.
#
#   make lint                      ruff on the whole repository, then mypy on services/
#   .venv/bin/ruff check --fix .   sorts imports and updates old annotation forms in place

VENV ?= .venv
PY ?= $(VENV)/bin/python

.PHONY: lint

lint: venv  ## ruff (style, likely bugs, import order) on the repository and mypy on services/
	$(PY) -m ruff check .
	$(PY) -m mypy
