-- Every rejected request (AuthEvent). Append-only: events have no identity of their own, so a
-- batch retried by the writer is deduplicated by its insert token, not by the engine.
-- tenant_id / endpoint_id are '' when the token named no tenant or the payload no endpoint:
-- sorting keys cannot be Nullable, and '' is never a real id.
CREATE TABLE IF NOT EXISTS auth_events
(
    tenant_id   LowCardinality(String),
    endpoint_id String,
    identity    Nullable(String),
    token_id    Nullable(String),
    reason      LowCardinality(String),
    source      String,
    observed_at DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(observed_at)
ORDER BY (tenant_id, endpoint_id, observed_at)
TTL toDateTime(observed_at) + INTERVAL {ttl_auth_events_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;
