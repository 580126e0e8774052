# syntax=docker/dockerfile:1
# One image for every role: `edithook serve` (default), `edithook worker`, `edithook migrate`.

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, so that code changes do not re-install them.
COPY requirements.lock ./
RUN pip install --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
RUN pip install --no-deps --no-build-isolation . \
    && python -c "import app.main, app.cli"

FROM python:3.11-slim-bookworm AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDITHOOK_HOST=0.0.0.0 \
    EDITHOOK_PORT=8000 \
    EDITHOOK_STORAGE_URL=/data/results
RUN groupadd --system --gid 10001 edithook \
    && useradd --system --uid 10001 --gid edithook --no-create-home --shell /usr/sbin/nologin edithook \
    && mkdir -p /data/results && chown -R 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# `edithook healthcheck` knows both roles: /healthz for `serve`, the heartbeat a `worker`
# keeps in /tmp (renewed every 10 s while its jobs run, stale after 60 s).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["edithook", "healthcheck"]
ENTRYPOINT ["edithook"]
CMD ["serve"]
