# The profilestream worker image: `docker build -t profilestream .`
#
#   docker run --rm -e KAFKA_BOOTSTRAP=kafka:9092 -e REDIS_URL=redis://redis:6379/0 \
#       -p 6066:6066 profilestream                  # a worker (the default command)
#   docker run --rm profilestream lag --group profilestream      # any other tool
#
# Settings are environment variables (docs/operations.md); docker-compose.yml
# runs the whole stack. The image reads stored profiles with the Python reader:
# the optional compiled one (native/) needs a Rust toolchain to build, see
# docs/operations.md.

# ---- build: install the package and its dependencies into a virtualenv
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package is built from (pyproject names README.md as its readme).
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY signals ./signals
COPY segments ./segments
COPY streams ./streams
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install . \
    && /opt/venv/bin/profilestream --help > /dev/null

# ---- runtime: the virtualenv, a non-root user, nothing else
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HTTP_PORT=6066

RUN groupadd --system --gid 10001 profilestream \
    && useradd --system --uid 10001 --gid profilestream \
        --home-dir /home/profilestream --create-home profilestream

COPY --from=build /opt/venv /opt/venv

# faust keeps a small data directory ("<CONSUMER_GROUP>-control-data") in the
# working directory, so the working directory must be writable by the user.
WORKDIR /home/profilestream
USER profilestream

EXPOSE 6066

# Liveness only: /healthz answers while the process serves HTTP. /readyz also
# needs Redis, the consumer and assigned partitions: a worker beyond the number
# of partitions is idle but healthy, so readiness is not a health check.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HTTP_PORT', '6066'), timeout=4)" || exit 1

ENTRYPOINT ["profilestream"]
CMD ["worker"]
