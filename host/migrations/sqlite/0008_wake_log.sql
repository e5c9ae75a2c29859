-- Every wake fired, in the same transaction as what it caused: the customer's
-- timeline names the timer and the plugin that asked, and a count per wake
-- shows it fired once. `host` is the process that fired it.
CREATE TABLE wake_log (
    seq          INTEGER PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    plugin       TEXT NOT NULL,
    due_at       BIGINT NOT NULL,
    set_at       BIGINT NOT NULL,
    fired_at     BIGINT NOT NULL,
    host         TEXT NOT NULL
);
CREATE INDEX wake_log_customer ON wake_log (tenant_id, customer_id, due_at);
