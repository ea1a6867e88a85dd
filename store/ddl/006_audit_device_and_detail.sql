-- The executor's idempotency and per-device cooldown key on the MDM device, and an attempt's
-- outcome needs words (why skipped, which credential answered): two columns for that.
ALTER TABLE remediation_audit ADD COLUMN IF NOT EXISTS device_id String AFTER vendor;
ALTER TABLE remediation_audit ADD COLUMN IF NOT EXISTS detail String AFTER reason;

-- Closed loop: each force-sync that went out, and whether the telemetry flags it was sent for
-- resolved afterwards. Pending until they resolve; time_to_remediate once they have.
CREATE VIEW IF NOT EXISTS remediation_outcomes AS
SELECT
    a.tenant_id AS tenant_id,
    a.action_id AS action_id,
    a.sync_vendor AS vendor,
    a.sync_device AS device_id,
    a.sync_serial AS serial_number,
    a.sync_endpoint AS endpoint_id,
    a.synced_at AS synced_at,
    countIf(f.flag_id != '') AS flags,
    countIf(f.flag_id != '' AND r.flag_id != '') AS resolved_flags,
    if(flags > 0 AND resolved_flags = flags, maxIf(r.last_seen, r.flag_id != ''), NULL)
        AS remediated_at,
    if(remediated_at IS NULL, NULL,
       greatest(0, dateDiff('millisecond', a.synced_at, remediated_at)) / 1000.0)
        AS time_to_remediate_s
FROM
(
    SELECT tenant_id, action_id, any(vendor) AS sync_vendor, any(device_id) AS sync_device,
           any(serial_number) AS sync_serial, any(endpoint_id) AS sync_endpoint,
           min(at) AS synced_at
    FROM remediation_audit FINAL
    WHERE state = 'succeeded' AND action = 'force_sync' AND NOT dry_run AND endpoint_id != ''
    GROUP BY tenant_id, action_id
) AS a
LEFT JOIN (SELECT * FROM drift_flags FINAL WHERE state = 'raised') AS f
    ON f.tenant_id = a.tenant_id AND f.endpoint_id = a.sync_endpoint
LEFT JOIN (SELECT * FROM drift_flags FINAL WHERE state = 'resolved') AS r
    ON r.tenant_id = f.tenant_id AND r.flag_id = f.flag_id
WHERE f.flag_id = '' OR f.first_seen <= a.synced_at
GROUP BY a.tenant_id, a.action_id, a.sync_vendor, a.sync_device, a.sync_serial,
         a.sync_endpoint, a.synced_at;
