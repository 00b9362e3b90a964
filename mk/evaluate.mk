# Detection quality: federated vs centralised vs local-only, fp32 and int8, next to a same-run IsolationForest, and
# the report. See docs/quality.md. Included by the main Makefile (`-include mk/*.mk`), which defines VENV, PY and `venv`.
#
#   make evaluate        every model kind (dense, conv1d, lstm) × every mode on every labelled data set (SKAB,
#                        Shuttle, the synthetic fleet): one table of kinds; reports/evaluation/<data set>/ (~6 min idle
#                        on 2 cores, ~15 min loaded; progress printed)
#   make evaluate CONFIG=examples/shuttle.yaml   one data set only, into reports/evaluation/
#   make evaluate KINDS=dense EVAL_DATASETS=skab  the quick one (~1 min): dense only, SKAB only
#   make report          reports/report.html: one self-contained page with the tables and every figure (SKAB's)
#   make evaluate-sweep  the settings table of docs/quality.md (each row one evaluation; ~10 min)
#   make evaluate-unseen generated device types unlike the shipped data (services/evaluation/unseen.py): the served
#                        detector vs the same-run IsolationForest per seed (SEEDS=0,1,2; ~1 min per seed loaded)
#
# Knobs: CONFIG, EVAL_DIR, REPORT, EVAL_MODES (comma-separated subset of federated,centralised,local), KINDS,
# EVAL_DATASETS (subset of skab,shuttle,synthetic,own-data; ignored with CONFIG); any config value through
# FEDAD__SECTION__KEY=value, e.g. `make evaluate FEDAD__FEDERATION__ROUNDS=5` (applies to every data set).

VENV ?= .venv
PY ?= $(VENV)/bin/python
EVAL_DIR ?= reports/evaluation
REPORT ?= reports/report.html
EVAL_MODES ?= federated,centralised,local
EVAL_DATASETS ?= skab,shuttle,synthetic,own-data
SEEDS ?= 0,1,2
KINDS ?= dense,conv1d,lstm
CONFIG ?=

.PHONY: evaluate report evaluate-sweep

evaluate: venv  ## every model kind × federated/centralised/local-only × fp32/int8 on every labelled data set
	$(PY) -m services.cli evaluate $(if $(CONFIG),--config $(CONFIG),--datasets $(EVAL_DATASETS)) --out $(EVAL_DIR) \
		--modes $(EVAL_MODES) --kinds $(KINDS)

report: venv  ## render reports/report.html from the last `make evaluate`
	$(PY) -m services.cli report --results $(EVAL_DIR) --out $(REPORT)

evaluate-sweep: venv  ## the settings tried for docs/quality.md, one evaluation each
	$(PY) -m services.evaluation.sweep

.PHONY: evaluate-kinds

evaluate-kinds: venv  ## dense vs conv1d vs lstm, federated only, on SKAB (the quick look; docs/quality.md)
	$(PY) -m services.evaluation.kinds --kinds $(KINDS)

.PHONY: evaluate-few-rows
FEW_ROWS ?= 100,400

evaluate-few-rows: venv  ## a node with N normal rows: federated vs local-only, SKAB, 3 seeds (~3 min on 1 core; docs/quality.md)
	$(PY) -m services.evaluation.few_rows --rows $(FEW_ROWS) --baselines run,node --seeds 0,1,2 --out reports/few-rows

.PHONY: evaluate-unseen

evaluate-unseen: venv  ## the served detector vs IsolationForest on generated device types the shipped data lack
	$(PY) -m services.evaluation.unseen --seeds $(SEEDS)
