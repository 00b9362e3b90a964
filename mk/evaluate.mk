# Detection quality: federated vs centralised vs local-only, fp32 and int8, next to a same-run IsolationForest, and
# the report. See docs/quality.md. Included by the main Makefile (`-include mk/*.mk`), which defines VENV, PY and `venv`.
#
#   make evaluate        train and score every mode on SKAB (~1 min on 2 cores); prints the table; reports/evaluation/
#   make evaluate CONFIG=examples/shuttle.yaml   the same on another data set (examples/: skab, shuttle, synthetic)
#   make report          reports/report.html: one self-contained page with the table and every figure
#   make evaluate-sweep  the settings table of docs/quality.md (each row one evaluation; ~10 min)
#
# Knobs: CONFIG, EVAL_DIR, REPORT, EVAL_MODES (comma-separated subset of federated,centralised,local); any config value
# through FEDAD__SECTION__KEY=value, e.g. `make evaluate FEDAD__FEDERATION__ROUNDS=5`.

VENV ?= .venv
PY ?= $(VENV)/bin/python
EVAL_DIR ?= reports/evaluation
REPORT ?= reports/report.html
EVAL_MODES ?= federated,centralised,local
CONFIG ?=

.PHONY: evaluate report evaluate-sweep

evaluate: venv  ## federated vs centralised vs local-only vs IsolationForest, fp32 and int8 (CONFIG=…; reports/evaluation/)
	$(PY) -m services.cli evaluate $(if $(CONFIG),--config $(CONFIG)) --out $(EVAL_DIR) --modes $(EVAL_MODES)

report: venv  ## render reports/report.html from the last `make evaluate`
	$(PY) -m services.cli report --results $(EVAL_DIR) --out $(REPORT)

evaluate-sweep: venv  ## the settings tried for docs/quality.md, one evaluation each
	$(PY) -m services.evaluation.sweep

.PHONY: evaluate-kinds
KINDS ?= dense,conv1d,lstm

evaluate-kinds: venv  ## dense vs conv1d vs lstm autoencoders, federated on SKAB: quality fp32/int8, size, time (docs/quality.md)
	$(PY) -m services.evaluation.kinds --kinds $(KINDS)
