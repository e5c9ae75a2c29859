-- A host takes, renews and releases the wakes of its claim by `claimed_by`;
-- without an index each of those read the whole table, so a burst of N wakes
-- cost N²/500 row reads (a million due at once slowed as it went). Only
-- claimed rows are indexed: most wakes wait unclaimed.
CREATE INDEX wakes_claim ON wakes (claimed_by) WHERE claimed_by IS NOT NULL;
