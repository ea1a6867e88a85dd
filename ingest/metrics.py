"""Prometheus metrics of the receiver. In multi-process mode prometheus_client aggregates them
through PROMETHEUS_MULTIPROC_DIR, which the supervisor sets before starting workers."""

import functools

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "driftline_ingest_requests_total",
    "OTLP export requests by transport, signal and outcome",
    ["transport", "signal", "outcome"],
)
SNAPSHOTS = Counter("driftline_ingest_snapshots_total", "Snapshots published", ["signal"])
REJECTS = Counter(
    "driftline_ingest_rejects_total", "Rejected requests or resources by reason", ["reason"]
)
AUTH_EVENTS = Counter(
    "driftline_ingest_auth_events_total", "AuthEvents published or suppressed", ["result"]
)
PUBLISH_SECONDS = Histogram(
    "driftline_ingest_publish_seconds",
    "Time for the bus to acknowledge one request's snapshots",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


# Looking a labelled child up costs more than incrementing it; the label sets are few.
requests = functools.cache(REQUESTS.labels)
snapshots = functools.cache(SNAPSHOTS.labels)
rejects = functools.cache(REJECTS.labels)
auth_events = functools.cache(AUTH_EVENTS.labels)

BODY_BYTES = Gauge(
    "driftline_ingest_body_bytes_in_flight",
    "Request body bytes held across connections (the memory budget counts these)",
    multiprocess_mode="livesum",
)
LOOP_LAG = Gauge(
    "driftline_ingest_loop_lag_seconds",
    "Latest event-loop lag sample (the load shedder's signal)",
    multiprocess_mode="max",
)
ANSWER_QUEUE = Gauge(
    "driftline_ingest_queue_seconds",
    "Least time from arrival to answer of the requests answered in the last 100 ms",
    multiprocess_mode="max",
)
SHED_PROBABILITY = Gauge(
    "driftline_ingest_shed_probability",
    "Share of new requests currently answered 'retry later'",
    multiprocess_mode="max",
)
INFLIGHT_LIMIT = Gauge(
    "driftline_ingest_inflight_limit",
    "Admitted requests that may wait on the bus at once (2x what it answers in the queue target)",
    multiprocess_mode="livesum",
)
