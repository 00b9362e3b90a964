# Containers: the wheelhouse, the two images and the compose stack. See docs/containers.md.
# Included by the main Makefile (`include mk/*.mk`), which defines VENV, PY and the `venv` target; it also works on
# its own: make -f mk/containers.mk images PY=python3
#
#   make wheels          build/wheels: every runtime wheel, downloaded on the host (image builds stay offline)
#   make images          fedad-aggregator, fedad-worker and fedad-worker-detect :latest (docker/*.Dockerfile)
#   make image-worker-detect  only the detect-only worker (no torch: a node too weak to train, config mode detect_only)
#   make images-arm64    fedad-worker and fedad-worker-detect :$(IMAGE_TAG)-arm64 for linux/arm64 boards, built on
#                        this (x86-64) machine without emulation: base-arm64, wheels-arm64, then both images
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

ARM64_BASE_IMAGE ?= local/python-base-arm64
WHEELS_ARM64_DIR ?= build/wheels-arm64
DETECT_EXCLUDE = torch onnxscript scikit-learn cryptography  # what docker/worker-detect.Dockerfile leaves out
ARM64_SUFFIX ?= -arm64
# pip's tags for PyPI's aarch64 wheels that bookworm (glibc 2.36) runs; pip does not widen a manylinux tag itself
AARCH64_PIP = $(foreach v,36 35 34 33 32 31 30 29 28 27 26 25 24 23 22 21 20 19 18 17,--platform manylinux_2_$(v)_aarch64) \
	--platform manylinux2014_aarch64 --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none

.PHONY: wheels images image-worker-detect compose-up compose-down compose-ps compose-logs test-containers \
	wheels-arm64 base-arm64 images-arm64 image-worker-arm64 image-worker-detect-arm64

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

# The detect-only worker: onnxruntime, no torch (docs/containers.md: 275 MB against the worker's 1,010 MB).
image-worker-detect: wheels
	$(DOCKER) build --build-arg BASE_IMAGE=$(BASE_IMAGE) -f docker/worker-detect.Dockerfile -t $(WORKER_DETECT_IMAGE) .

# linux/arm64 (Raspberry Pi-class gateways): PyPI's aarch64 wheels in a wheelhouse per image (the detect-only one
# leaves out what that image does not install; PyPI's aarch64 torch is its CUDA build, which brings ~2.4 GB of
# NVIDIA wheels: TORCH_INDEX=https://download.pytorch.org/whl/cpu gives the CPU build boards need) ...
define arm64_wheelhouse
	@test -x $(PY) || command -v $(PY) >/dev/null || $(MAKE) venv
	rm -rf $(1).tmp && mkdir -p $(1).tmp
	$(PY) docker/requirements.py pyproject.toml --exclude $(2) > $(1).tmp/requirements.txt
	$(PY) -m pip download --quiet --only-binary=:all: --dest $(1).tmp $(AARCH64_PIP) \
		$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -r $(1).tmp/requirements.txt
	rm -rf $(1) && mv $(1).tmp $(1)
	@touch $(1)/.complete
	@echo "arm64 wheelhouse: $$$$(ls $(1)/*.whl | wc -l) wheels, $$$$(du -sh $(1) | cut -f1) in $(1)"
endef
$(WHEELS_ARM64_DIR)/.complete: pyproject.toml docker/requirements.py
	$(call arm64_wheelhouse,$(WHEELS_ARM64_DIR),)
$(WHEELS_ARM64_DIR)-detect/.complete: pyproject.toml docker/requirements.py
	$(call arm64_wheelhouse,$(WHEELS_ARM64_DIR)-detect,$(DETECT_EXCLUDE))
wheels-arm64: $(WHEELS_ARM64_DIR)/.complete $(WHEELS_ARM64_DIR)-detect/.complete

# ... an arm64 Debian root made without running arm64 (docker/arm64-base.sh; once per machine) ...
base-arm64:
	@$(DOCKER) image inspect $(ARM64_BASE_IMAGE) >/dev/null 2>&1 || bash docker/arm64-base.sh $(ARM64_BASE_IMAGE)

# ... and the images built by copying files only (BUILD_IMAGE runs the build steps), then labelled linux/arm64. The
# build context is a copy (hard links) of the usual one with the arm64 wheelhouse as build/wheels, so that no
# build ever sends both wheelhouses to the engine.
ARM64_BUILD = $(DOCKER) build --build-arg BASE_IMAGE=$(ARM64_BASE_IMAGE) --build-arg BUILD_IMAGE=$(BASE_IMAGE) \
	--build-arg "PIP_PLATFORM=$(AARCH64_PIP)"
define arm64_context
	rm -rf $(1) && mkdir -p $(1)/build $(1)/docker
	cp -al services pyproject.toml config.yaml .dockerignore $(1)/
	cp -al docker/*.py $(1)/docker/
	cp -al $(2) $(1)/build/wheels
endef
image-worker-detect-arm64: $(WHEELS_ARM64_DIR)-detect/.complete base-arm64
	$(call arm64_context,build/context-arm64-detect,$(WHEELS_ARM64_DIR)-detect)
	$(ARM64_BUILD) -f docker/worker-detect.Dockerfile -t $(WORKER_DETECT_IMAGE)$(ARM64_SUFFIX) build/context-arm64-detect
	$(PY) docker/set_platform.py $(WORKER_DETECT_IMAGE)$(ARM64_SUFFIX) linux/arm64

image-worker-arm64: $(WHEELS_ARM64_DIR)/.complete base-arm64
	$(call arm64_context,build/context-arm64,$(WHEELS_ARM64_DIR))
	$(ARM64_BUILD) -f docker/worker.Dockerfile -t $(WORKER_IMAGE)$(ARM64_SUFFIX) build/context-arm64
	$(PY) docker/set_platform.py $(WORKER_IMAGE)$(ARM64_SUFFIX) linux/arm64

images-arm64: image-worker-detect-arm64 image-worker-arm64

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
