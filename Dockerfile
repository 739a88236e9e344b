# syntax=docker/dockerfile:1
# One image for every fleetwatch role; the command picks the role:
#   docker run IMAGE worker | trainer | summarizer | console serve | train --stream transactions --from-file PATH
# Port 9400 serves /metrics, /healthz and /readyz; the console serves its API, page, /metrics and /healthz
# on 8443 (HTTPS).

# Both stages use the same base, so the virtual environment built in the first one runs unchanged in
# the second (same interpreter path and ABI). Pinned by exact tag; pin by digest too where the
# registry's digest can be checked.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, in their own layer, so that a source change does not reinstall them: the
# project's own and its `console` extra (`fleetwatch console serve`: FastAPI, uvicorn, PyJWT, argon2,
# psycopg, cryptography). Every dependency has a wheel for this platform but annoy (the sensor stream's
# neighbour index), which PyPI ships as source only: this stage has a C++ compiler for it, the runtime none.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(project['dependencies'] + project['optional-dependencies']['console']))" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt
COPY README.md ./
COPY shared ./shared
COPY workers ./workers
# The project itself, not editable, with its package data (the console's page, workers/console_page/); then
# pip and setuptools leave the environment: the runtime needs neither.
RUN pip install --no-deps -c constraints.txt . \
    && pip uninstall -y pip setuptools

FROM ${PYTHON_IMAGE} AS runtime
# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 fleetwatch \
    && useradd --system --uid 10001 --gid fleetwatch --home-dir /var/lib/fleetwatch --create-home \
        --shell /usr/sbin/nologin fleetwatch
COPY --from=build /opt/venv /opt/venv
# The working directory is the process's only writable place besides /tmp (faust keeps its table
# state under the working directory); the chart mounts an emptyDir on both for a read-only root.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FLEETWATCH_LOG_FORMAT=json \
    FLEETWATCH_DEV_DIR=/var/lib/fleetwatch/dev \
    FLEETWATCH_CACHE_DIR=/tmp/fleetwatch-cache
WORKDIR /var/lib/fleetwatch
USER 10001:10001
EXPOSE 9400 8443
# No HEALTHCHECK here: `train` is a one-shot job with nothing to probe; compose and the chart probe the
# long-running roles on :9400/healthz, and the console on its own port (:8443/healthz over HTTPS).
ENTRYPOINT ["fleetwatch"]
CMD ["worker"]
