FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY ingest ingest
COPY processors processors
COPY actions actions
COPY driftline driftline
RUN pip install --no-cache-dir .
ENTRYPOINT ["driftline"]
