# fedad worker: one edge node's federated trainer and its /detect server.
#
#   make wheels        # on the host: every wheel into build/wheels (the image build itself needs no network)
#   docker build -f docker/worker.Dockerfile -t fedad-worker .                # context: the repository root
#   docker build --build-arg BASE_IMAGE=local/python-base ...                  # offline: a debootstrap'ed base
#   docker run -e FEDAD_WORKER_ID=valve1 -v SKAB/valve1:/data/skab/valve1:ro -v valve1-state:/state fedad-worker
#   make image-worker-arm64   # linux/arm64 on an x86-64 machine, running nothing of arm64 (docs/containers.md)
#
# Built like docker/worker-detect.Dockerfile (which says why): a slimmed copy of the base's root in a FROM scratch
# stage, and BASE_IMAGE / BUILD_IMAGE / PIP_PLATFORM for another architecture.
#
# Legacy builder (Docker 20.10) and BuildKit alike: no `# syntax=` line, no RUN --mount, no COPY --chmod.
ARG BASE_IMAGE=python:3.11-slim
ARG BUILD_IMAGE=${BASE_IMAGE}
# the service's user and group id: numeric, so that Kubernetes' runAsNonRoot can verify it
ARG UID=10001

FROM ${BASE_IMAGE} AS base

# ---- build: a venv filled only from the wheelhouse, then trimmed ---------------------------------------------
FROM ${BUILD_IMAGE} AS build
# ORT_DISABLE_TELEMETRY: recent onnxruntime Linux wheels (1.32 here) ship 1DS telemetry (a device id, an event store,
# HTTPS uploads to Microsoft) unless this is set before it initialises; an edge node must not phone home.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 ORT_DISABLE_TELEMETRY=1
# Distributions from pyproject.toml this image leaves out (space-separated); the worker needs all of them.
ARG EXCLUDE=""
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
# Not needed to run: C++ headers, CMake files, C++ test binaries and libraries, protoc, test suites, sources/stubs.
WORKDIR /opt/venv/lib/python3.11/site-packages
RUN rm -rf torch/include torch/share torch/test torch/bin/*Test torch/bin/test_* torch/bin/protoc* \
           torch/lib/*_test.so torch/lib/libaoti_custom_ops.so torch/lib/libbackend_with_compiler.so \
 && find . -depth -type d -name tests -exec rm -rf {} + \
 && find . -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pyi' -o -name '*.c' -o -name '*.cpp' \
           -o -name '*.h' -o -name '*.hpp' \) -delete
COPY services /app/services
COPY docker/entrypoint.py docker/healthcheck.py docker/warm_bytecode.py /app/
# Natively: a smoke test (the build fails if the service cannot be imported from what is installed) that also
# compiles the bytecode of every module the service loads (see warm_bytecode.py for why only those). For another
# architecture nothing of the target runs here: the build machine's Python 3.11 compiles the bytecode (the same on
# every architecture) of every library except torch, sympy, scipy and scikit-learn, whose modules are mostly never
# imported (all of torch's would add ~240 MB).
WORKDIR /app
RUN if [ -z "${PIP_PLATFORM}" ]; then /opt/venv/bin/python warm_bytecode.py worker; \
    else python3 -m compileall -q -j 0 -x '/site-packages/(torch|sympy|scipy|sklearn)/' \
           /opt/venv/lib/python3.11/site-packages; fi \
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
