-- The change feed: one row per change a customer, a follow-up or a plugin
-- went through, written in the same transaction as the change (a
-- transactional outbox: a transaction that rolls back leaves none, one that
-- commits loses none). `GET /v1/changes` and the webhook deliveries read it.
-- `at` is when the change took effect (the time its plugins were told, as on
-- the timeline; an import of old orders is dated then); `recorded_at` is the
-- database's wall clock when it was written, which retention goes by.
--
-- SQLite has one writer at a time, so `seq` order is commit order and the
-- feed's order `pos` is `seq` itself (PostgreSQL gives `pos` after commit).
CREATE TABLE changes (
    seq          INTEGER PRIMARY KEY,
    pos          INTEGER GENERATED ALWAYS AS (seq) VIRTUAL,
    id           TEXT NOT NULL,
    tenant_id    TEXT NOT NULL,
    type         TEXT NOT NULL,
    customer_id  TEXT,
    data         TEXT NOT NULL,
    at           BIGINT NOT NULL,
    recorded_at  BIGINT NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);
CREATE INDEX changes_feed ON changes (tenant_id, pos);
CREATE INDEX changes_recorded ON changes (recorded_at);
