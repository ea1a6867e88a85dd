-- Which ingest token each accepted snapshot came with (its id, never the token), so that
-- during a rotation's grace window the laptops still on the retiring token can be listed
-- before the grace ends, rather than all turning up as stale_token flags at once.
ALTER TABLE endpoint_states ADD COLUMN IF NOT EXISTS token_id SimpleAggregateFunction(anyLast, Nullable(String));

-- Per endpoint and token: first and last accepted request (our clock). Filled from every
-- insert into endpoint_states; the heartbeat writer stores a snapshot again when an endpoint's
-- token changes, so a switch shows within one write.
CREATE TABLE IF NOT EXISTS endpoint_tokens
(
    tenant_id   LowCardinality(String),
    token_id    String,
    endpoint_id String,
    first_seen  SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_seen   SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (tenant_id, token_id, endpoint_id)
TTL toDateTime(last_seen) + INTERVAL {ttl_snapshots_days} DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS endpoint_tokens_mv TO endpoint_tokens AS
SELECT tenant_id, assumeNotNull(token_id) AS token_id, endpoint_id,
       last_received AS first_seen, last_received AS last_seen
FROM endpoint_states
WHERE token_id IS NOT NULL;
