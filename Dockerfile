# The worker image: `docker compose` runs worker, beat and Flower from it (see
# docker-compose.yml). Dependencies sit in their own layer, built from pyproject.toml
# alone, so editing the source rebuilds only the last, small layers.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies (runtime, the flower and tracing extras, no dev tools): install the project
# from an empty package skeleton, then remove the skeleton itself so only its dependencies stay.
# The product's packages: pyproject.toml's packages.find, less the benchmarks
# (tests/unit/test_packaging.py holds the two lists together).
ARG PACKAGES="apis brokers redisconn settings telemetry upstreams results tasks worker ops sandbox"
COPY pyproject.toml ./
RUN set -eux; \
    for package in $PACKAGES; do \
        mkdir -p "$package"; touch "$package/__init__.py"; \
    done; \
    touch README.md; \
    pip install '.[flower,tracing]'; \
    pip uninstall --yes api-layer-worker; \
    rm -rf $PACKAGES README.md build ./*.egg-info

# The source, installed without touching the dependency layer above.
COPY README.md ./
COPY apis ./apis
COPY brokers ./brokers
COPY redisconn ./redisconn
COPY settings ./settings
COPY telemetry ./telemetry
COPY upstreams ./upstreams
COPY results ./results
COPY tasks ./tasks
COPY worker ./worker
COPY ops ./ops
COPY sandbox ./sandbox
RUN pip install --no-deps . && rm -rf build ./*.egg-info

# Nothing here needs root or writes to the image: results, queue and schedule live in Redis.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app
USER app

CMD ["python", "-m", "worker", "--loglevel=INFO"]
