-- Which client versions the fleet runs now, per tool, and how many endpoints are outdated.
-- clickhouse-client --param_tenant=acme --queries-file version_distribution.sql
SELECT
    e.service_name AS service,
    coalesce(e.app_version, '(none)') AS version,
    count() AS endpoints,
    countIf(d.endpoint_id != '') AS outdated
FROM endpoints_latest AS e
LEFT JOIN
(
    SELECT DISTINCT endpoint_id
    FROM drift_current
    WHERE tenant_id = {tenant:String} AND kind = 'outdated_client'
) AS d ON d.endpoint_id = e.endpoint_id
WHERE e.tenant_id = {tenant:String}
GROUP BY service, version
ORDER BY service, endpoints DESC;
