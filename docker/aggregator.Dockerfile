# fedad aggregator: the federation's round state machine and global model (the cloud node).
#
#   make wheels        # on the host: every wheel into build/wheels (the image build itself needs no network)
#   docker build -f docker/aggregator.Dockerfile -t fedad-aggregator .            # context: the repository root
#   docker build --build-arg BASE_IMAGE=local/python-base ...                  # offline: a debootstrap'ed base
#   docker run -p 127.0.0.1:8080:8080 --env-file tokens.env -v fedad-aggregator-state:/state fedad-aggregator
#
# Legacy builder (Docker 20.10) and BuildKit alike: no `# syntax=` line, no RUN --mount, no COPY --chmod.
ARG BASE_IMAGE=python:3.11-slim

# ---- build: a venv filled only from the wheelhouse, then trimmed ---------------------------------------------
FROM ${BASE_IMAGE} AS build
# ORT_DISABLE_TELEMETRY: recent onnxruntime Linux wheels (1.32 here) ship 1DS telemetry (a device id, an event store,
# HTTPS uploads to Microsoft) unless this is set before it initialises; an edge node must not phone home.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 ORT_DISABLE_TELEMETRY=1
# Distributions from pyproject.toml the aggregator does not import: it averages flat float32 vectors and seeds the
# first one with numpy (services/model/layout.py), so no torch, no ONNX, no scikit-learn (tests/test_layout.py);
# device data (OTLP) reaches workers only.
ARG EXCLUDE="torch onnx onnxscript onnxruntime scikit-learn opentelemetry-proto"
COPY docker/requirements.py pyproject.toml /src/
COPY build/wheels /wheels
RUN python3 -m venv /opt/venv \
 && python3 /src/requirements.py /src/pyproject.toml --exclude ${EXCLUDE} > /src/requirements.txt \
 && /opt/venv/bin/pip install -q --no-index --find-links /wheels --no-compile -r /src/requirements.txt \
 && /opt/venv/bin/pip uninstall -y -q pip setuptools
# Not needed to run: test suites, sources and stubs.
WORKDIR /opt/venv/lib/python3.11/site-packages
RUN find . -depth -type d -name tests -exec rm -rf {} + \
 && find . -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pyi' -o -name '*.c' -o -name '*.cpp' \
           -o -name '*.h' -o -name '*.hpp' \) -delete
COPY services /app/services
COPY docker/entrypoint.py docker/healthcheck.py docker/warm_bytecode.py /app/
# Smoke test (the build fails if the service cannot be imported from what is installed) that also compiles the
# bytecode of every module the service loads; see warm_bytecode.py for why only those.
WORKDIR /app
RUN /opt/venv/bin/python warm_bytecode.py aggregator \
 && /opt/venv/bin/python -m compileall -q /app \
 && rm warm_bytecode.py __pycache__/warm_bytecode.*

# ---- runtime -------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG UID=10001
RUN groupadd --gid ${UID} fedad \
 && useradd --no-log-init --uid ${UID} --gid fedad --create-home --home-dir /home/fedad --shell /usr/sbin/nologin fedad \
 && mkdir -p /state /etc/fedad \
 && chown fedad:fedad /state
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
# The default configuration. Mount another over /etc/fedad/config.yaml (or point FEDAD_CONFIG elsewhere) and
# override single values with FEDAD__SECTION__KEY=value. Its tokens are development values: give real ones as
# FEDAD__WORKERS__<ID>__TOKEN from an env file or a secret, never baked into an image.
COPY config.yaml /etc/fedad/config.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1 \
    FEDAD_CONFIG=/etc/fedad/config.yaml \
    FEDAD_SERVICE=aggregator
WORKDIR /app
# numeric, so that Kubernetes' runAsNonRoot can verify it
USER ${UID}:${UID}
# /state: the global model, round number and per-round history; a named volume keeps them across restarts.
VOLUME ["/state"]
EXPOSE 8080
HEALTHCHECK --interval=3s --timeout=3s --start-period=60s --retries=3 CMD ["python", "/app/healthcheck.py"]
ENTRYPOINT ["python", "/app/entrypoint.py", "aggregator"]
