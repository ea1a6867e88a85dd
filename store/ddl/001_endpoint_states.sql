-- Endpoint state history as changes, not every export: one row per distinct state of an
-- endpoint. Repeated snapshots of the same state collapse on merge (min/max of the times), so
-- the table grows with configuration changes, not with telemetry volume. AggregatingMergeTree
-- rather than ReplacingMergeTree because both ends are needed: Replacing keeps one whole row,
-- so it could keep last_seen or first_seen but not both.
-- state_hash is computed by driftline.store.state_hash over service_name, app_version, team_id,
-- serial_number and resource_attributes, so those columns are functions of the key and
-- `any` keeps the right value (declared as aggregates so ClickHouse 26 accepts them).
CREATE TABLE IF NOT EXISTS endpoint_states
(
    tenant_id           LowCardinality(String),
    endpoint_id         String,
    state_hash          UInt64,
    service_name        SimpleAggregateFunction(any, LowCardinality(String)),
    app_version         SimpleAggregateFunction(any, LowCardinality(Nullable(String))),
    team_id             SimpleAggregateFunction(any, LowCardinality(Nullable(String))),
    serial_number       SimpleAggregateFunction(any, Nullable(String)),
    resource_attributes SimpleAggregateFunction(any, Map(String, String)),
    first_seen          SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
    last_seen           SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    -- server clock: an endpoint's own clock may be wrong, ours decides "still reporting"
    last_received       SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (tenant_id, endpoint_id, state_hash)
-- our clock, not the endpoint's: a laptop with a wrong clock (or replayed old data) must not
-- have its state expire on insert
TTL toDateTime(last_received) + INTERVAL {ttl_snapshots_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Latest state per endpoint. FINAL folds not-yet-merged parts; the tuple keeps argMax from
-- skipping NULLs (a team_id that went away must show as NULL, not as the previous team);
-- ties on last_seen are broken by our receive time, then by hash, so the answer is stable.
CREATE VIEW IF NOT EXISTS endpoints_latest AS
SELECT
    tenant_id,
    endpoint_id,
    latest.1 AS state_hash,
    latest.2 AS service_name,
    latest.3 AS app_version,
    latest.4 AS team_id,
    latest.5 AS serial_number,
    latest.6 AS resource_attributes,
    latest.7 AS state_since,
    first_seen_any AS first_seen,
    last_seen_any AS last_seen,
    last_received_any AS last_received
FROM
(
    SELECT
        tenant_id,
        endpoint_id,
        argMax(
            (state_hash, service_name, app_version, team_id, serial_number, resource_attributes, first_seen),
            (last_seen, last_received, state_hash)
        ) AS latest,
        min(first_seen) AS first_seen_any,
        max(last_seen) AS last_seen_any,
        max(last_received) AS last_received_any
    FROM endpoint_states FINAL
    GROUP BY tenant_id, endpoint_id
);
