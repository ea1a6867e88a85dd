-- The console's two building blocks, without drift_current's join to every endpoint's state:
-- drift_open is each open flag alone (latest transition "raised", same rule as drift_current),
-- drift_episodes each flag's latest episode, opened and (if it was) closed, for the open-drift
-- series. Both aggregate drift_flags without FINAL: a duplicate cannot change a max.
CREATE VIEW IF NOT EXISTS drift_open AS
SELECT
    tenant_id,
    flag_id,
    latest.2 AS endpoint_id,
    latest.3 AS kind,
    latest.4 AS detail,
    latest.5 AS first_seen,
    latest.6 AS last_seen
FROM
(
    SELECT
        tenant_id,
        flag_id,
        argMax(
            (state, endpoint_id, kind, detail, first_seen, last_seen),
            (last_seen, state = 'resolved')
        ) AS latest
    FROM drift_flags
    GROUP BY tenant_id, flag_id
)
WHERE latest.1 = 'raised';

CREATE VIEW IF NOT EXISTS drift_episodes AS
SELECT
    tenant_id,
    flag_id,
    any(endpoint_id) AS endpoint_id,
    any(kind) AS kind,
    argMaxIf(first_seen, last_seen, state = 'raised') AS opened_at,
    if(argMax(state, (last_seen, state = 'resolved')) = 'resolved',
       maxIf(last_seen, state = 'resolved'), NULL) AS closed_at
FROM drift_flags
GROUP BY tenant_id, flag_id
HAVING countIf(state = 'raised') > 0;
