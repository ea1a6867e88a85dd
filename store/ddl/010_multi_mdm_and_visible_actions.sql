-- Several MDMs per tenant: each report carries when the device last checked in with that MDM
-- (Jamf general.lastContactTime, Graph lastSyncDateTime, Iru last_check_in); the planner acts
-- through the MDM a Mac last checked in with.
ALTER TABLE compliance_records ADD COLUMN IF NOT EXISTS last_contact Nullable(DateTime64(3, 'UTC'));

-- Closed loop, every action visible: force-syncs sent for telemetry flags (pending until the
-- flags resolve) and those sent for an MDM's own report alone (no endpoint: pending until that
-- MDM reports the device compliant). `reason` says why each was sent, e.g.
-- "missing_profile: profile … not installed".
CREATE OR REPLACE VIEW remediation_outcomes AS
SELECT
    a.tenant_id AS tenant_id,
    a.action_id AS action_id,
    a.sync_vendor AS vendor,
    a.sync_device AS device_id,
    a.sync_serial AS serial_number,
    a.sync_endpoint AS endpoint_id,
    a.sync_reason AS reason,
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
           any(reason) AS sync_reason, min(at) AS synced_at
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
         a.sync_endpoint, a.sync_reason, a.synced_at
UNION ALL
SELECT
    m.tenant_id AS tenant_id,
    m.action_id AS action_id,
    m.sync_vendor AS vendor,
    m.sync_device AS device_id,
    m.sync_serial AS serial_number,
    '' AS endpoint_id,
    m.sync_reason AS reason,
    m.synced_at AS synced_at,
    toUInt64(0) AS flags,
    toUInt64(0) AS resolved_flags,
    nullIf(minIf(c.reported_at, c.status = 'compliant' AND c.reported_at >= m.synced_at),
           toDateTime64(0, 3, 'UTC')) AS remediated_at,
    if(remediated_at IS NULL, NULL,
       greatest(0, dateDiff('millisecond', m.synced_at, remediated_at)) / 1000.0)
        AS time_to_remediate_s
FROM
(
    SELECT tenant_id, action_id, any(vendor) AS sync_vendor, any(device_id) AS sync_device,
           any(serial_number) AS sync_serial, any(reason) AS sync_reason, min(at) AS synced_at
    FROM remediation_audit FINAL
    WHERE state = 'succeeded' AND action = 'force_sync' AND NOT dry_run AND endpoint_id = ''
    GROUP BY tenant_id, action_id
) AS m
LEFT JOIN (SELECT * FROM compliance_records FINAL) AS c
    ON c.tenant_id = m.tenant_id AND c.vendor = m.sync_vendor AND c.device_id = m.sync_device
GROUP BY m.tenant_id, m.action_id, m.sync_vendor, m.sync_device, m.sync_serial,
         m.sync_reason, m.synced_at;
