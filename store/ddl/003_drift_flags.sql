-- Flag history: one row per (flag_id, state). flag_id is deterministic, so a redelivered
-- transition lands on the same key and the replacing merge keeps one copy; a flag raised
-- again after a resolve replaces its earlier "raised" row (version = last_seen), which is all
-- drift_current needs. No time partitioning: rows of one key must stay in one partition to merge.
-- TTL caveat: flags are transitions, so a flag left open longer than the TTL loses its
-- "raised" row and drops out of drift_current. A producer that re-sends a long-open flag with a
-- fresh last_seen keeps it (the new row replaces the old one in place, no duplicate).
CREATE TABLE IF NOT EXISTS drift_flags
(
    tenant_id      LowCardinality(String),
    flag_id        String,
    state          LowCardinality(String),
    endpoint_id    String,
    kind           LowCardinality(String),
    detail         String,
    first_seen     DateTime64(3, 'UTC'),
    last_seen      DateTime64(3, 'UTC'),
    policy_version Int64,
    recorded_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(last_seen)
ORDER BY (tenant_id, flag_id, state)
TTL toDateTime(last_seen) + INTERVAL {ttl_flags_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Open drift: flags whose latest transition is "raised". Latest = greatest last_seen; on a tie
-- the resolve wins, because a resolve always follows the raise of its own episode (a processor
-- may stamp it with the condition's last sighting). argMax over all rows needs no FINAL:
-- duplicates cannot change a maximum. Endpoint context comes from endpoints_latest; a flag
-- with no snapshot behind it (stale_token from auth events alone) keeps NULLs there.
CREATE VIEW IF NOT EXISTS drift_current AS
SELECT
    f.tenant_id AS tenant_id,
    f.flag_id AS flag_id,
    f.endpoint_id AS endpoint_id,
    f.kind AS kind,
    f.detail AS detail,
    f.first_seen AS first_seen,
    f.last_seen AS last_seen,
    f.policy_version AS policy_version,
    e.team_id AS team_id,
    e.service_name AS service_name,
    e.app_version AS app_version
FROM
(
    SELECT
        tenant_id,
        flag_id,
        latest.2 AS endpoint_id,
        latest.3 AS kind,
        latest.4 AS detail,
        latest.5 AS first_seen,
        latest.6 AS last_seen,
        latest.7 AS policy_version
    FROM
    (
        SELECT
            tenant_id,
            flag_id,
            argMax(
                (state, endpoint_id, kind, detail, first_seen, last_seen, policy_version),
                (last_seen, state = 'resolved')
            ) AS latest
        FROM drift_flags
        GROUP BY tenant_id, flag_id
    )
    WHERE latest.1 = 'raised'
) AS f
LEFT JOIN endpoints_latest AS e ON e.tenant_id = f.tenant_id AND e.endpoint_id = f.endpoint_id
SETTINGS join_use_nulls = 1;
