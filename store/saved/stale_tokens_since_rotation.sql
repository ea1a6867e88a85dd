-- Endpoints still sending a retired or revoked ingest token since a given rotation time,
-- with how often and from where. The rotation time is in `driftline policy show` (token_rotated_at).
-- clickhouse-client --param_tenant=acme --param_since='2026-11-27 12:00:00' --queries-file stale_tokens_since_rotation.sql
SELECT
    endpoint_id,
    any(identity) AS identity,
    groupUniqArray(token_id) AS tokens,
    sum(count) AS rejections,  -- an AuthEvent row stands for `count` rejected requests
    min(first_observed_at) AS first_rejected,
    max(observed_at) AS last_rejected,
    groupUniqArray(source) AS sources
FROM auth_events FINAL
WHERE tenant_id = {tenant:String}
  AND reason IN ('retired', 'revoked')
  AND observed_at >= {since:DateTime64(3, 'UTC')}
GROUP BY endpoint_id
ORDER BY rejections DESC;
