# Containers: the wheelhouse, the two images and the compose stack. See docs/containers.md.
# Included by the main Makefile (`include mk/*.mk`), which defines VENV, PY and the `venv` target; it also works on
# its own: make -f mk/containers.mk images PY=python3
#
#   make wheels          build/wheels: every runtime wheel, downloaded on the host (image builds stay offline)
#   make images          fedad-aggregator, fedad-worker and fedad-worker-detect :latest (docker/*.Dockerfile)
#   make image-worker-detect  only the detect-only worker (no torch: a node too weak to train, config mode detect_only)
#   make compose-up      the stack (aggregator + 3 workers) on 127.0.0.1:8080-8083; waits until every worker serves
#   make compose-down    stop and remove it (VOLUMES=1: also the state volumes)
#   make test-containers the end-to-end tests against a real engine (tests/containers, marker `docker`)
#
# Knobs: DATA_DIR (folder holding skab/; default $FEDAD_DATA_DIR, else ../shared/data), BASE_IMAGE
# (default $FEDAD_BASE_IMAGE, else python:3.11-slim; offline: local/python-base from .ci/docker-engine.sh),
# IMAGE_TAG, TORCH_INDEX (as for `make venv`: https://download.pytorch.org/whl/cpu off the development machines,
# for the CPU-only torch wheel), PIP_DOWNLOAD_ARGS, COMPOSE_PROJECT, COMPOSE (docker compose | docker-compose).

VENV ?= .venv
PY ?= $(VENV)/bin/python
DOCKER ?= docker
COMPOSE ?= $(shell if $(DOCKER) compose version >/dev/null 2>&1; then echo "$(DOCKER) compose"; else echo docker-compose; fi)
BASE_IMAGE ?= $(or $(FEDAD_BASE_IMAGE),python:3.11-slim)
IMAGE_TAG ?= latest
AGGREGATOR_IMAGE ?= fedad-aggregator:$(IMAGE_TAG)
WORKER_IMAGE ?= fedad-worker:$(IMAGE_TAG)
WORKER_DETECT_IMAGE ?= fedad-worker-detect:$(IMAGE_TAG)
WHEELS_DIR ?= build/wheels
PIP_DOWNLOAD_ARGS ?=
COMPOSE_PROJECT ?= fedad
COMPOSE_ENV_FILE ?= docker/.env
DATA_DIR ?= $(or $(FEDAD_DATA_DIR),../shared/data)
COMPOSE_CMD = FEDAD_AGGREGATOR_IMAGE=$(AGGREGATOR_IMAGE) FEDAD_WORKER_IMAGE=$(WORKER_IMAGE) \
	FEDAD_DATA_DIR=$(abspath $(DATA_DIR)) \
	$(COMPOSE) --env-file $(COMPOSE_ENV_FILE) -p $(COMPOSE_PROJECT) -f docker/compose.yaml

.PHONY: wheels images image-worker-detect compose-up compose-down compose-ps compose-logs test-containers

# The wheelhouse is rebuilt from scratch when pyproject.toml changes, so no stale wheel lingers in it.
wheels: $(WHEELS_DIR)/.complete
$(WHEELS_DIR)/.complete: pyproject.toml docker/requirements.py
	@test -x $(PY) || command -v $(PY) >/dev/null || $(MAKE) venv
	rm -rf $(WHEELS_DIR).tmp && mkdir -p $(WHEELS_DIR).tmp
	$(PY) docker/requirements.py pyproject.toml > $(WHEELS_DIR).tmp/requirements.txt
	$(PY) -m pip download --quiet --only-binary=:all: --dest $(WHEELS_DIR).tmp \
		$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) $(PIP_DOWNLOAD_ARGS) -r $(WHEELS_DIR).tmp/requirements.txt
	rm -rf $(WHEELS_DIR) && mv $(WHEELS_DIR).tmp $(WHEELS_DIR)
	@touch $@
	@echo "wheelhouse: $$(ls $(WHEELS_DIR)/*.whl | wc -l) wheels, $$(du -sh $(WHEELS_DIR) | cut -f1) in $(WHEELS_DIR)"

images: wheels image-worker-detect
	$(DOCKER) build --build-arg BASE_IMAGE=$(BASE_IMAGE) -f docker/aggregator.Dockerfile -t $(AGGREGATOR_IMAGE) .
	$(DOCKER) build --build-arg BASE_IMAGE=$(BASE_IMAGE) -f docker/worker.Dockerfile -t $(WORKER_IMAGE) .
	@$(DOCKER) image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' \
		| grep -E '^($(AGGREGATOR_IMAGE)|$(WORKER_IMAGE)|$(WORKER_DETECT_IMAGE)) '

# The detect-only worker: onnxruntime, no torch (BENCHMARKS.md section 4: 383 MB against the worker's 1,097 MB).
image-worker-detect: wheels
	$(DOCKER) build --build-arg BASE_IMAGE=$(BASE_IMAGE) -f docker/worker-detect.Dockerfile -t $(WORKER_DETECT_IMAGE) .

# Fresh random tokens, readable only by you; the aggregator gets all three, each worker its own.
$(COMPOSE_ENV_FILE):
	@umask 077 && while IFS= read -r line; do case "$$line" in \
		FEDAD_TOKEN_*) echo "$${line%%=*}=$$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')" ;; \
		*) echo "$$line" ;; esac; done < docker/.env.example > $@
	@echo "wrote $@ with fresh worker tokens"

compose-up: images $(COMPOSE_ENV_FILE)
	@test -d "$(DATA_DIR)/skab" || { echo "no skab/ in $(DATA_DIR): make compose-up DATA_DIR=/path/holding/skab"; exit 1; }
	t0=$$(date +%s.%N); $(COMPOSE_CMD) up -d && $(PY) docker/wait_ready.py $(COMPOSE_PROJECT) --since $$t0

compose-down:
	$(COMPOSE_CMD) down $(if $(VOLUMES),--volumes)

compose-ps:
	$(COMPOSE_CMD) ps

compose-logs:
	$(COMPOSE_CMD) logs --tail 50

test-containers:
	$(PY) -m pytest -m docker tests/containers
