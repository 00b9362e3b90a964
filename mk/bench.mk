# Performance: benchmark scripts that print figures beside their same-run references; BENCHMARKS.md holds
# the figures and how they were made. Included by the main Makefile (`-include mk/*.mk`), which defines VENV, PY and
# `venv`.
#
#   make bench            every script, one after the other (~11 min on 2 cores)
#   make bench-detect     POST /detect req/s, latency, rows/s vs the HTTP ceiling, onnxruntime and torch (~4 min)
#   make bench-aggregate  FedAvg over N = 10, 100, 1000 updates, default and 1.3 M-parameter models (~1 min)
#   make bench-round      round overhead with 10, 100, 300 light HTTP clients (~2 min)
#   make bench-resources  worker RSS idle / training / serving, epoch time, model sizes, bytes per round (~1 min)
#   make bench-streams    one row per /detect request vs the constant handler, MQTT rows/s vs a bare subscriber,
#                         publish -> alarm latency at 100 and 1,000 rows/s (needs mosquitto; ~3 min)
#   make bench-kinds      per model kind: training s / round and peak RSS of the training process, serving µs/row at
#                         batch 1 and 4,096, each beside the dense model's (~1 min)
#   make bench-fleet      10,000 simulated nodes: enrollment (and kill -9 mid-storm), sampled rounds, async rounds with
#                         stragglers, offline nodes and kill -9, 3 site aggregators; beside in-process references
#                         (~10 min on 2 cores; run it niced: `nice -n 10 make bench-fleet`)
#
# Load generator: wrk (Debian: apt-get install wrk); without it the scripts fall back to a Python load generator,
# which measures itself. py-spy (installed here) records the profiles `--profile` asks for.
# Figures go to stdout and to $(BENCH_OUT)/<script>.json; extra arguments through BENCH_ARGS, e.g.
#   make bench-detect BENCH_ARGS="--duration 10 --repeat 5"

VENV ?= .venv
PY ?= $(VENV)/bin/python
BENCH_OUT ?= reports/benchmarks
BENCH_ARGS ?=

.PHONY: bench bench-detect bench-aggregate bench-round bench-resources bench-streams bench-kinds

$(VENV)/.bench-deps: | $(VENV)/.installed
	$(PY) -m pip install -q 'py-spy>=0.3'
	@command -v wrk >/dev/null || echo "note: wrk not found (apt-get install wrk); using the Python load generator"
	touch $@

$(BENCH_OUT):
	mkdir -p $@

bench: bench-detect bench-aggregate bench-round bench-resources bench-streams bench-kinds bench-late-join bench-serving-rss \
       bench-precision bench-fleet  ## every benchmark (BENCHMARKS.md)

bench-detect: venv $(VENV)/.bench-deps | $(BENCH_OUT)  ## /detect vs the HTTP ceiling, onnxruntime and torch eager
	$(PY) -m benchmarks.detect --json $(BENCH_OUT)/detect.json --profile $(BENCH_OUT)/detect-profile.txt $(BENCH_ARGS)

bench-aggregate: venv | $(BENCH_OUT)  ## FedAvg time and peak memory for 10, 100, 1000 updates
	$(PY) -m benchmarks.aggregate --json $(BENCH_OUT)/aggregate.json $(BENCH_ARGS)

bench-round: venv $(VENV)/.bench-deps | $(BENCH_OUT)  ## round overhead with 10, 100, 300 light clients over HTTP
	$(PY) -m benchmarks.round --json $(BENCH_OUT)/round.json --profile $(BENCH_OUT)/round-profile.txt $(BENCH_ARGS)

bench-resources: venv $(VENV)/.bench-deps | $(BENCH_OUT)  ## worker memory, epoch time, model sizes, bytes per round
	$(PY) -m benchmarks.resources --json $(BENCH_OUT)/resources.json $(BENCH_ARGS)

bench-streams: venv $(VENV)/.bench-deps | $(BENCH_OUT)  ## stream path, MQTT ingestion and alarm latency
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || { echo "apt-get install mosquitto"; exit 1; }
	$(PY) -m benchmarks.streams --json $(BENCH_OUT)/streams.json --profile $(BENCH_OUT)/streams-profile.txt $(BENCH_ARGS)

bench-kinds: venv | $(BENCH_OUT)  ## each model kind's training round and serving cost, ratio to dense
	$(PY) -m benchmarks.kinds --json $(BENCH_OUT)/kinds.json $(BENCH_ARGS)

# make bench-late-join  a 4th worker started after a 3-round campaign: process start -> first /readyz and /detect 200,
#                       beside the campaign workers' first model and a restart from persisted state (~30 s)
.PHONY: bench-late-join
bench-late-join: venv | $(BENCH_OUT)  ## how fast a worker that joins after the campaign serves
	$(PY) -m benchmarks.late_join --json $(BENCH_OUT)/late_join.json $(BENCH_ARGS)

# make bench-serving-rss  each worker's serving-process memory after a 6-round federation with a detect-only node,
#                         here and at BENCH_REF (a git revision, the reference) in the same run (~2 min)
BENCH_REF ?= 31f7bff
.PHONY: bench-serving-rss
bench-serving-rss: venv | $(BENCH_OUT)  ## serving-process memory here vs at BENCH_REF, same run
	$(PY) -m benchmarks.serving_rss --ref $(BENCH_REF) --json $(BENCH_OUT)/serving_rss.json $(BENCH_ARGS)

.PHONY: bench-fleet
bench-fleet: venv | $(BENCH_OUT)  ## a fleet of 10,000 light nodes: enrollment, sampled and async rounds, site aggregators
	$(PY) -m benchmarks.fleet --json $(BENCH_OUT)/fleet.json $(BENCH_ARGS)

# make bench-precision  what serving.model auto costs an install (a second session, both score the held-out rows),
#                       against the install without it, same run (~1 min)
.PHONY: bench-precision
bench-precision: venv  ## serving.model auto's install cost vs the install without it, same run
	$(PY) -m benchmarks.precision_choice $(BENCH_ARGS)
