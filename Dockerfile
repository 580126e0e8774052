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
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('EDITHOOK_PORT', '8000') + '/healthz', timeout=2)"]
ENTRYPOINT ["edithook"]
CMD ["serve"]
