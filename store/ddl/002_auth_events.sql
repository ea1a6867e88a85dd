-- Every rejected request (AuthEvent). A retried batch is dropped by its insert token; an event
-- re-delivered by Kafka after a sink crash has the same (tenant, endpoint, time, reason, source)
-- and collapses under FINAL (the receiver sends at most one per endpoint and reason per
-- interval, so two real events never share that key).
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
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(observed_at)
ORDER BY (tenant_id, endpoint_id, observed_at, reason, source)
TTL toDateTime(observed_at) + INTERVAL {ttl_auth_events_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;
