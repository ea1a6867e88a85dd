-- Live policy push: one entry per push per integration (pushed | unchanged | republish_required
-- | failed | dry_run). The latest "pushed" digest per integration is what "unchanged" compares
-- with, so an unchanged policy pushes nothing.
CREATE TABLE IF NOT EXISTS policy_changelog
(
    tenant_id      LowCardinality(String),
    vendor         LowCardinality(String),
    policy_version Int64,
    digest         String,
    outcome        LowCardinality(String),
    detail         String,
    payload_file   String,
    at             DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(at)
ORDER BY (tenant_id, vendor, at, digest)
TTL toDateTime(at) + INTERVAL {ttl_audit_days} DAY;
