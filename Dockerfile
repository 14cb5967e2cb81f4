# One image for every foodpipe service; the command picks the role:
#   docker run --rm foodpipe:local topics | produce | consume | health | config
#
# Stage "build" installs the pinned dependencies and foodpipe into a virtualenv;
# stage "runtime" copies that virtualenv and the source, and nothing else: no compiler,
# no pip cache, no build backend. Both stages use the same base so the virtualenv's
# interpreter links stay valid.
#
# Layout inside the image:
#   /opt/venv                     the virtualenv (on PATH)
#   /app/src/foodpipe             the package, installed in editable mode from here
#   /app/src/database             init.sql, migrations: db.SCHEMA_DIR is
#                                 Path(foodpipe.__file__).parents[1] / "database",
#                                 which resolves here only because the package runs in place
#   /var/lib/foodpipe/producer    the producer's order-id counters (mount a volume)

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app

# The dependencies change far less often than the code: installing them from
# requirements.txt alone keeps this layer cached across code changes. Every pin has a
# manylinux wheel, so no compiler is needed.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# Editable install: the `foodpipe` entry point runs the package from /app/src, where
# src/database sits next to it (a regular install would copy the package into
# site-packages and leave the SQL files behind). Then compile the bytecode now, because
# the containers run with a read-only root filesystem, and drop the build leftovers.
COPY pyproject.toml ./
COPY src/ ./src/
RUN pip install --no-cache-dir --no-deps -e . \
    && python -m compileall -q /app/src \
    && rm -rf /app/src/*.egg-info \
    && pip uninstall --yes pip


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="foodpipe" \
      org.opencontainers.image.description="Kafka -> PostgreSQL food-order pipeline: producer, consumer, tools" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    PRODUCER_STATE_DIR=/var/lib/foodpipe/producer

# A fixed, non-root uid/gid: volume ownership and Kubernetes' runAsNonRoot both want a
# number. The state directory is created here, owned by that user, so a fresh named
# volume mounted on it inherits the ownership.
RUN groupadd --system --gid 10001 foodpipe \
    && useradd --system --uid 10001 --gid foodpipe --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin foodpipe \
    && install -d -o foodpipe -g foodpipe -m 0750 /var/lib/foodpipe /var/lib/foodpipe/producer

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app

WORKDIR /app
USER 10001:10001

ENTRYPOINT ["foodpipe"]
CMD ["--help"]
