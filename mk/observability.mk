# Observability: /metrics, structured logs, the live dashboard. See docs/observability.md.
# Included by the main Makefile, which defines VENV, PY, PYTEST_ARGS and the `venv` target.
#
#   make chromium              Debian's Chromium for the dashboard's browser test (as root: apt-get)
#   make test-observability    tests/observability: real stack on loopback, /metrics, JSON logs, headless Chromium
#   make dashboard-screenshot  docs/img/dashboard.png and docs/img/worker.png from a real 8-round run
#
# Screenshots of each browser test run land in build/artifacts/ (FEDAD_ARTIFACTS to change).

VENV ?= .venv
PY ?= $(VENV)/bin/python
APT_GET ?= $(if $(filter 0,$(shell id -u)),,sudo )apt-get

.PHONY: chromium test-observability dashboard-screenshot

chromium:
	@command -v chromium >/dev/null 2>&1 || { $(APT_GET) update -qq && \
		DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq chromium fonts-dejavu-core >/dev/null; }
	@chromium --version

test-observability: venv chromium
	$(PY) -m pytest tests/observability $(PYTEST_ARGS)

dashboard-screenshot: venv chromium
	FEDAD_OBS_ROUNDS=8 FEDAD_OBS_BATCHES=24 FEDAD_ARTIFACTS=build/artifacts/docs \
		$(PY) -m pytest -q tests/observability/test_dashboard_browser.py
	mkdir -p docs/img
	cp build/artifacts/docs/dashboard.png docs/img/dashboard.png
	cp build/artifacts/docs/worker-valve1.png docs/img/worker.png
	@ls -l docs/img/dashboard.png docs/img/worker.png
