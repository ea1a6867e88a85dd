-- One row per remediation attempt and state (planned | sent | succeeded | failed | skipped).
-- Natural key (tenant, action, attempt, state): a redelivered audit row replaces itself.
-- `request` is method + path only: never headers, bodies, tokens or credentials.
CREATE TABLE IF NOT EXISTS remediation_audit
(
    tenant_id       LowCardinality(String),
    action_id       String,
    attempt         UInt16,
    state           LowCardinality(String),
    endpoint_id     String,
    serial_number   Nullable(String),
    vendor          LowCardinality(String),
    action          LowCardinality(String),
    reason          String,
    dry_run         Bool,
    request         String,
    response_status Nullable(UInt16),
    at              DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(at)
ORDER BY (tenant_id, action_id, attempt, state)
TTL toDateTime(at) + INTERVAL {ttl_audit_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;
