-- Schedules per tenant: a cron expression (UTC) that starts a job (a rescore)
-- at each occurrence. `next_at` is the next occurrence not yet run; a host runs
-- it by moving `next_at` past now in the same transaction that creates the job,
-- so each occurrence runs once across hosts, and occurrences missed while
-- every host was down run once, not once each.
CREATE TABLE schedules (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    cron        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    next_at     BIGINT NOT NULL,
    last_at     BIGINT,
    last_job    TEXT,
    runs        BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_at);
CREATE INDEX schedules_tenant ON schedules (tenant_id, created_at);
