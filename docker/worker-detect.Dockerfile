# fedad detect-only worker: an edge node too weak to train. It pulls each global model, calibrates its own int8 scales
# and threshold on its local normal rows with onnxruntime (services/model/graph.py, quantize.py) and serves /detect;
# it takes no part in training (config: workers[].mode detect_only, set by default here). No torch, no scikit-learn.
#
#   make wheels        # on the host: every wheel into build/wheels (the image build itself needs no network)
#   docker build -f docker/worker-detect.Dockerfile -t fedad-worker-detect .  # context: the repository root
#   docker run -e FEDAD_WORKER_ID=other -v SKAB/other:/data/skab/other:ro -v other-state:/state fedad-worker-detect
#   make image-worker-detect-arm64   # linux/arm64 on an x86-64 machine, running nothing of arm64 (docs/containers.md)
#
# The final stage starts FROM scratch with a slimmed copy of the base image's root (docker/slim_root.py): what the
# base holds but a server never uses (translations, docs, apt, perl, Python's test suite) is left out, not deleted in
# a later layer, which would not make the image smaller. `docker history` then shows one layer each for the OS and
# Python, the libraries, the service and its config (sizes in docs/containers.md).
#
# Another architecture (arm64 here) is built by copying files only, so no emulation is needed: BASE_IMAGE is a root
# of the target architecture (its files are only copied), BUILD_IMAGE one of the build machine's (it runs the build
# steps), build/wheels a wheelhouse for the target, PIP_PLATFORM the pip tags that select them; docker/set_platform.py
# then labels the image linux/arm64. Natively all of these keep their defaults.
#
# Legacy builder (Docker 20.10) and BuildKit alike: no `# syntax=` line, no RUN --mount, no COPY --chmod.
ARG BASE_IMAGE=python:3.11-slim
ARG BUILD_IMAGE=${BASE_IMAGE}
# the service's user and group id: numeric, so that Kubernetes' runAsNonRoot can verify it
ARG UID=10001

FROM ${BASE_IMAGE} AS base

# ---- build: the libraries from the wheelhouse only, the service, a slimmed root -------------------------------
FROM ${BUILD_IMAGE} AS build
# ORT_DISABLE_TELEMETRY: recent onnxruntime Linux wheels (1.32 here) ship 1DS telemetry (a device id, an event store,
# HTTPS uploads to Microsoft) unless this is set before it initialises; an edge node must not phone home.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 ORT_DISABLE_TELEMETRY=1
# Distributions from pyproject.toml this image leaves out (space-separated): training (torch, and onnxscript for its
# exporter), the evaluation's plots and projections (scikit-learn) and the operators' certificate tool (cryptography,
# `python -m services.security certs`, run where the certificates are made); tests/worker/test_detect_only.py serves
# without them.
ARG EXCLUDE="torch onnxscript scikit-learn cryptography"
ARG PIP_PLATFORM=""
COPY docker/requirements.py docker/slim_root.py pyproject.toml /src/
COPY build/wheels /wheels
# A venv without pip; pip from a throwaway venv installs into it (--target), for the target's platform when it is set.
RUN python3 -m venv /opt/pip \
 && python3 -m venv --without-pip /opt/venv \
 && python3 /src/requirements.py /src/pyproject.toml --exclude ${EXCLUDE} > /src/requirements.txt \
 && /opt/pip/bin/pip install -q --no-index --find-links /wheels --only-binary=:all: --no-compile ${PIP_PLATFORM} \
      --target /opt/venv/lib/python3.11/site-packages -r /src/requirements.txt \
 && rm -rf /opt/pip /opt/venv/lib/python3.11/site-packages/bin
# Not needed to run: test suites, sources and stubs; onnxruntime's mobile-model helpers; uvicorn's --reload watcher (watchfiles); numpy's f2py and distutils.
WORKDIR /opt/venv/lib/python3.11/site-packages
RUN find . -depth -type d -name tests -exec rm -rf {} + \
 && find . -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pyi' -o -name '*.c' -o -name '*.cpp' \
           -o -name '*.h' -o -name '*.hpp' \) -delete \
 && rm -rf onnxruntime/tools/mobile_helpers numpy/f2py numpy/_core/include \
           numpy/distutils watchfiles watchfiles-*.dist-info
COPY services /app/services
COPY docker/entrypoint.py docker/healthcheck.py docker/warm_bytecode.py /app/
# Natively: a smoke test (the build fails if the service cannot be imported from what is installed) that also
# compiles the bytecode of every module the service loads (warm_bytecode.py says why only those). For another
# architecture nothing of the target can run here: the bytecode of the libraries (the same on every architecture)
# is compiled with the build machine's Python 3.11, all of it, since which modules the service loads cannot be seen.
WORKDIR /app
RUN if [ -z "${PIP_PLATFORM}" ]; then /opt/venv/bin/python warm_bytecode.py worker-detect; \
    else python3 -m compileall -q -j 0 /opt/venv/lib/python3.11/site-packages; fi \
 && python3 -m compileall -q /app \
 && rm warm_bytecode.py __pycache__/warm_bytecode.*
COPY --from=base / /rootfs
ARG UID
RUN python3 /src/slim_root.py /rootfs --venv /opt/venv --uid ${UID}

# ---- runtime: the slimmed root, the libraries, the service -------------------------------------------------------
FROM scratch
COPY --from=build /rootfs /
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
# The default configuration. Mount another over /etc/fedad/config.yaml (or point FEDAD_CONFIG elsewhere) and
# override single values with FEDAD__SECTION__KEY=value. Its tokens are development values: give real ones as
# FEDAD__WORKERS__<ID>__TOKEN from an env file or a secret, never baked into an image.
COPY config.yaml /etc/fedad/config.yaml
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin \
    LANG=C.UTF-8 \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1 \
    FEDAD_CONFIG=/etc/fedad/config.yaml \
    FEDAD__DATA__SOURCE__DIR=/data/skab \
    FEDAD_WORKER_MODE=detect_only \
    FEDAD_SERVICE=worker
WORKDIR /app
ARG UID
USER ${UID}:${UID}
# /state: checkpoint, round, scaler, threshold, ONNX files; a named volume keeps them across restarts.
# /data: mount this node's SKAB partition read-only at /data/skab/<folder>.
VOLUME ["/state", "/data"]
# No EXPOSE: a worker listens on its own port from the config (8081-8083 by default).
HEALTHCHECK --interval=3s --timeout=3s --start-period=60s --retries=3 CMD ["python", "/app/healthcheck.py"]
ENTRYPOINT ["python", "/app/entrypoint.py", "worker"]
