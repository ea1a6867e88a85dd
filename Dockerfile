FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY bus bus
COPY ingest ingest
COPY processors processors
COPY actions actions
COPY store store
COPY driftline driftline
RUN pip install --no-cache-dir .
ENTRYPOINT ["driftline"]
