# Identity: certificates for mutual TLS and worker tokens. See docs/reliability.md.
# Included by the main Makefile (`-include mk/*.mk`), which defines VENV, PY and the `venv` target.
#
#   make certs                     a CA plus aggregator and per-worker certificates in tls.dir (config.yaml: certs/)
#   make certs CERTS_DIR=/x HOSTS="agg.example.org 10.0.0.5"   elsewhere, with extra names for the aggregator
#   make certs FORCE=1             a new CA too (otherwise an existing CA is reused)
#   make certs NODES="pump-17 pump-18"   also a client certificate per fleet node (enrollment.certificates)
#   make token                     a fresh worker token and the SHA-256 the aggregator keeps

VENV ?= .venv
PY ?= $(VENV)/bin/python
CERTS_DIR ?=
HOSTS ?=
NODES ?=
FORCE ?=

.PHONY: certs token

certs: venv
	$(PY) -m services.security certs $(if $(CERTS_DIR),--dir $(CERTS_DIR)) $(foreach h,$(HOSTS),--host $(h)) $(foreach n,$(NODES),--node $(n)) $(if $(FORCE),--force)

token: venv
	@t=$$($(PY) -m services.security new-token); echo "token:        $$t"; \
	echo "token_sha256: $$(echo "$$t" | $(PY) -m services.security hash-token)"
