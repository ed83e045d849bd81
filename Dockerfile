# syntax=docker/dockerfile:1
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MONITOR_DATABASE_URL=sqlite:////data/monitor.db

WORKDIR /app

# The CPU build of torch first, so that the install below does not pull CUDA packages.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md alembic.ini config.toml ./
COPY monitor ./monitor
COPY migrations ./migrations
RUN pip install --no-cache-dir torch==2.13.0 . \
    && useradd --create-home --uid 10001 monitor \
    && mkdir -p /data \
    && chown monitor:monitor /data

USER 10001
VOLUME ["/data"]

HEALTHCHECK --interval=60s --timeout=10s --start-period=30s --retries=3 \
    CMD ["monitor", "db", "status"]

ENTRYPOINT ["monitor", "--log-format", "json"]
CMD ["run"]
