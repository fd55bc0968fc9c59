# syntax=docker/dockerfile:1
# tailsampler's image: wheels are built in a builder stage that has a C compiler, so a compiled
# extension in the package builds there; the runtime stage gets only the wheels.
#   docker build -t tailsampler .
#   docker run -p 4317:4317 -p 4318:4318 -p 13133:13133 tailsampler
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
# gcc and the C library's headers; the image's own Python headers are in /usr/local/include.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common common
COPY collector collector
COPY policies policies
COPY storage storage
COPY loadgen loadgen
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels tailsampler
# A fixed numeric user, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 tailsampler \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/tailsampler \
       --shell /usr/sbin/nologin tailsampler \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/tailsampler
COPY deploy/docker/tailsampler.yaml /etc/tailsampler/tailsampler.yaml
USER 10001:10001
WORKDIR /var/lib/tailsampler
# The SQLite store of the default config.
VOLUME ["/var/lib/tailsampler"]
# OTLP/gRPC, OTLP/HTTP, admin (health, metrics, stats, kept traces)
EXPOSE 4317 4318 13133
# The slim image has no curl: ask /health with Python (an error status or no answer exits 1).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:13133/health', timeout=2)"]
# Exec form: tailsampler is PID 1 and gets SIGTERM itself; it decides what is pending, flushes
# the exporters and exits within service.shutdown_timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tailsampler"]
CMD ["serve", "--config", "/etc/tailsampler/tailsampler.yaml"]
