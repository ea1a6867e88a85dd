-- How long drift stays open, per kind: mean and p90 from raised to resolved, over a period.
-- clickhouse-client --param_tenant=acme --param_days=30 --queries-file mean_time_to_resolve.sql
SELECT
    kind,
    count() AS resolved_flags,
    round(avg(dateDiff('second', first_seen, last_seen)) / 3600, 2) AS mean_hours,
    round(quantile(0.9)(dateDiff('second', first_seen, last_seen)) / 3600, 2) AS p90_hours
FROM drift_flags FINAL
WHERE tenant_id = {tenant:String}
  AND state = 'resolved'
  AND last_seen >= now64(3) - toIntervalDay({days:UInt32})
GROUP BY kind
ORDER BY kind;
