# buffered-stream: the ext_proc service only. Envoy runs from the official envoyproxy/envoy image.
#   docker build -t buffered-stream:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9464:9464 buffered-stream:0.1.0

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# A C compiler for the native run matcher (setup.py); the runtime image needs none.
RUN apt-get update \
 && apt-get install --yes --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/buffered-stream
WORKDIR /src
# Every dependency (setuptools for the build included) from the hash-pinned lock: the image holds
# exactly what the tests ran against.
COPY requirements/runtime.lock ./
RUN /opt/buffered-stream/bin/pip install --require-hashes -r runtime.lock
COPY pyproject.toml setup.py README.md ./
COPY filter ./filter
RUN /opt/buffered-stream/bin/pip install --no-deps --no-build-isolation ".[fast]" \
 && /opt/buffered-stream/bin/python -c "import buffered_stream.core._runs"

FROM python:3.11.14-slim-bookworm
# MALLOC_ARENA_MAX: buffered answers arrive as one large gRPC message on gRPC's threads; with
# glibc's default per-thread arenas the freed memory is kept, and RSS settles ~2x higher.
ENV PATH=/opt/buffered-stream/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2
RUN groupadd --system --gid 10001 buffered-stream \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin buffered-stream
COPY --from=build /opt/buffered-stream /opt/buffered-stream
USER 10001:10001
# ext_proc gRPC (+ grpc.health.v1), then HTTP /metrics and /healthz.
EXPOSE 50051 9464
ENTRYPOINT ["buffered-stream"]
# `serve` runs one worker process per CPU the container may use (its CPU limit, read from the
# cgroup); pass --workers N to choose.
CMD ["serve", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9464", "--log-level", "info"]
