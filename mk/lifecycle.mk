# A federation that keeps learning (README: The life of a model). Included by the main Makefile (`-include mk/*.mk`),
# which defines VENV, PY and `venv`.
#
#   make continual-week   a week of the synthetic fleet at one reading a minute, compressed into minutes: the first
#                         day trains the campaign, six days play to /detect as live streams, rounds keep opening on a
#                         schedule and train on the live rows kept; the aggregator and a worker are killed -9 midway.
#                         Fails if a round is lost. build/artifacts/continual-week.{json,png} (~6 min)
# Knobs: WEEK_ROUNDS (continual rounds, 30), WEEK_EVERY (seconds between rounds, 6), WEEK_REPLAY_S (wall time of the
# six live days, 240).

VENV ?= .venv
PY ?= $(VENV)/bin/python
WEEK_ROUNDS ?= 30
WEEK_EVERY ?= 6
WEEK_REPLAY_S ?= $(shell echo $$(( $(WEEK_ROUNDS) * 12 )))

.PHONY: continual-week

continual-week: venv  ## 30 continual rounds over a replayed week, with kill -9 midway; fails on a lost round
	$(PY) tests/reliability/continual_week.py --rounds $(WEEK_ROUNDS) --every $(WEEK_EVERY) \
		--replay-seconds $(WEEK_REPLAY_S)
