-- A customer's revision: it changes in every transaction that changes what an
-- event of the customer reads (the row, its fields, tags, segments, scores and
-- events). An event whose plugins ran before its write transaction, on a read
-- connection, keeps their results if the revision is still the one it read
-- (`pipeline::evaluate_ahead`), instead of reading everything again while
-- SQLite's one writer is held. Writers bump it with the customer row's own
-- update where they have one (metrics, profile, stage), else with one
-- statement per transaction (`store::queue_bump_revs`).
ALTER TABLE customers ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
