# The streaming worker. Build from the repository root:
#   docker build -f infra/worker.Dockerfile .
# (infra/docker-compose.yml does this with context `..`.)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the project (not editable, no extras), then drop the sources.
WORKDIR /tmp/src
COPY pyproject.toml README.md* ./
COPY streaming ./streaming
COPY loadtest ./loadtest
RUN pip install . && rm -rf /tmp/src

# Schemas and the model registry; compose mounts ../models over /app/models read-only.
WORKDIR /app
COPY schemas /app/schemas
COPY models /app/models

# Faust keeps its table data under the working directory, so /app must be writable.
RUN useradd --system --uid 10001 --home-dir /app streaming && chown streaming /app
USER streaming

ENV STREAMING_PIPELINE=/app/models/fraud/pipeline.toml \
    STREAMING_MODELS_DIR=/app/models \
    STREAMING_SCHEMAS_DIR=/app/schemas \
    STREAMING_METRICS_HOST=0.0.0.0 \
    STREAMING_METRICS_PORT=9464

EXPOSE 9464
CMD ["streaming", "worker"]
