# The streaming worker and its one-shot trainer: two targets of one build. From the repository root:
#   docker build -f infra/worker.Dockerfile --target worker .   # the runtime dependencies only
#   docker build -f infra/worker.Dockerfile --target train .    # + the `train` extra (scikit-learn, skl2onnx)
# (infra/docker-compose.yml builds both with context `..`.)
#
# Both images have the same layout: the pipeline file in /app/pipelines (from models/<name>/pipeline.toml,
# baked in), the Avro schemas in /app/schemas, and an empty model registry /app/models owned by the
# `streaming` user, which compose mounts a named volume over (the train service writes it, the worker
# reads it; an empty named volume takes the directory's owner on first mount).

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --system --uid 10001 --home-dir /app streaming
WORKDIR /app
COPY schemas /app/schemas
COPY models/fraud/pipeline.toml /app/pipelines/fraud/pipeline.toml
# /app/.streaming: the run directory (Faust's data folder, the learner's checkpoint key); /app/models: the registry
RUN mkdir -p /app/models /app/.streaming && chown streaming /app /app/models /app/.streaming
ENV STREAMING_PIPELINE=/app/pipelines/fraud/pipeline.toml \
    STREAMING_MODELS_DIR=/app/models \
    STREAMING_SCHEMAS_DIR=/app/schemas \
    STREAMING_RUN_DIR=/app/.streaming

# The project as a wheel (sources dropped), shared by both targets.
FROM base AS wheel
WORKDIR /tmp/src
COPY pyproject.toml README.md* ./
COPY streaming ./streaming
COPY loadtest ./loadtest
RUN pip wheel --no-deps --wheel-dir /wheels .

# `streaming train` (and retrain, drift calibrate): the runtime plus the `train` extra.
FROM base AS train
COPY --from=wheel /wheels /wheels
RUN pip install "$(ls /wheels/streaming-*.whl)[train]" && rm -rf /wheels
USER streaming
CMD ["streaming", "train"]

# The worker: the runtime dependencies only ([project.dependencies], no extras). Last, so a plain
# `docker build` without --target builds it.
FROM base AS worker
COPY --from=wheel /wheels /wheels
RUN pip install /wheels/streaming-*.whl && rm -rf /wheels
USER streaming
ENV STREAMING_METRICS_HOST=0.0.0.0 \
    STREAMING_METRICS_PORT=9464
EXPOSE 9464
CMD ["streaming", "worker"]
