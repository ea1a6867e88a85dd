-- When Driftline first received each state, by our clock, next to last_received: `driftline
-- endpoint` shows receipt times, because an endpoint's own clock may be years off. Rows written
-- before this column existed have no first receipt (NULL: not recorded, not guessed).
ALTER TABLE endpoint_states ADD COLUMN IF NOT EXISTS first_received
    SimpleAggregateFunction(min, Nullable(DateTime64(3, 'UTC')));
