-- A bulk job's customers that a plugin failed on. A rescore or dry-run goes on
-- with the healthy customers of a chunk when one fails; the job counts the failed
-- ones and keeps a sample with their errors, and ends as 'done_with_failures'.
ALTER TABLE jobs ADD COLUMN failed BIGINT NOT NULL DEFAULT 0;
-- Up to 20 failures of a chunk (JSON: [{customer_id, plugin, message}]), gathered
-- into the job's result when its last chunk is done.
ALTER TABLE job_chunks ADD COLUMN failures TEXT;
