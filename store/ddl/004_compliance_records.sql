-- What the MDM compliance import writes: one row per device per vendor report. Natural key
-- (tenant, vendor, device, reported_at): a re-imported report replaces itself (newest import
-- wins), a new report is new history.
CREATE TABLE IF NOT EXISTS compliance_records
(
    tenant_id     LowCardinality(String),
    vendor        LowCardinality(String),
    device_id     String,
    serial_number Nullable(String),
    status        LowCardinality(String),
    reason        String,
    reported_at   DateTime64(3, 'UTC'),
    imported_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(imported_at)
ORDER BY (tenant_id, vendor, device_id, reported_at)
TTL toDateTime(reported_at) + INTERVAL {ttl_compliance_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;
