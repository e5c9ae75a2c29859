-- Contract 0.2.0: a plugin's follow-ups may carry a key. While one with a key is
-- open, proposing the same plugin and key again updates it (due time and note)
-- instead of adding a second; the plugin can close it by key. Follow-ups
-- without a key (0.1.0, and `schedule-follow-up`) are as before.
ALTER TABLE follow_ups ADD COLUMN follow_up_key TEXT;
CREATE UNIQUE INDEX follow_ups_open_key ON follow_ups (tenant_id, customer_id, plugin, follow_up_key)
    WHERE status = 'open' AND follow_up_key IS NOT NULL;

-- Contract 0.2.0: a plugin's one pending wake per customer (`wake-at`): a later
-- request replaces it, `none` deletes it. Hosts claim due rows with a lease
-- (`claimed_by`, `lease_until`) so that each wake is worked once.
CREATE TABLE wakes (
    tenant_id    TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    plugin       TEXT NOT NULL,
    due_at       BIGINT NOT NULL,
    -- When it was asked for, and by which event (none for a wake's own answer).
    set_at       BIGINT NOT NULL,
    event_id     TEXT,
    claimed_by   TEXT,
    lease_until  BIGINT,
    PRIMARY KEY (tenant_id, customer_id, plugin)
);
CREATE INDEX wakes_due ON wakes (due_at);
