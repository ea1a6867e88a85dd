-- AuthEvents coalesce instead of being dropped past the receiver's rate limit: one row stands
-- for `count` rejected requests of one key, from first_observed_at to observed_at (the last).
-- Rows written before this migration are single rejections: count 1, first = last.
ALTER TABLE auth_events ADD COLUMN IF NOT EXISTS count UInt32 DEFAULT 1 AFTER source;
ALTER TABLE auth_events ADD COLUMN IF NOT EXISTS first_observed_at DateTime64(3, 'UTC')
    DEFAULT observed_at AFTER count;
