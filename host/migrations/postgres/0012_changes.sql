-- The change feed: one row per change a customer, a follow-up or a plugin
-- went through, written in the same transaction as the change (a
-- transactional outbox: a transaction that rolls back leaves none, one that
-- commits loses none). `GET /v1/changes` and the webhook deliveries read it.
-- `at` is when the change took effect (the time its plugins were told, as on
-- the timeline; an import of old orders is dated then); `recorded_at` is the
-- database's wall clock when it was written, which retention goes by.
--
-- `seq` is taken at insert, after the writer holds its customers' row locks,
-- so a customer's changes have increasing `seq`s. Transactions commit out of
-- `seq` order, though, so a reader paging on `seq` could pass a change that
-- commits later below its cursor. `pos` is the feed's order: given after
-- commit by one sequencer at a time (store::sequence_changes, under an
-- advisory lock) to every visible row without one, in `seq` order; a row
-- never becomes visible below a `pos` already given.
CREATE TABLE changes (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pos          BIGINT,
    id           TEXT NOT NULL,
    tenant_id    TEXT NOT NULL,
    type         TEXT NOT NULL,
    customer_id  TEXT,
    data         TEXT NOT NULL,
    at           BIGINT NOT NULL,
    recorded_at  BIGINT NOT NULL DEFAULT (CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT))
);
CREATE UNIQUE INDEX changes_pos ON changes (pos);
CREATE INDEX changes_unsequenced ON changes (seq) WHERE pos IS NULL;
CREATE INDEX changes_feed ON changes (tenant_id, pos);
CREATE INDEX changes_recorded ON changes (recorded_at);
