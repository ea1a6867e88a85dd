-- Open drift per team and kind, largest first.
-- clickhouse-client --param_tenant=acme --queries-file drift_by_team.sql
SELECT
    coalesce(team_id, '(no team)') AS team,
    kind,
    count() AS endpoints,
    min(first_seen) AS oldest_since
FROM drift_current
WHERE tenant_id = {tenant:String}
GROUP BY team, kind
ORDER BY endpoints DESC, team, kind;
