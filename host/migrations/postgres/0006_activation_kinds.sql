-- Activation history is history: every activate and every rollback is a row of
-- its own with its actor, reason and time (a rollback used to rewrite the row it
-- returned to, losing the earlier reason). `kind` says which it was: `activate`,
-- `rollback` (the row restores an earlier pair) or `disable` (a rollback of a
-- first activation, which takes the plugin out of service). `status` stays the
-- row's place in the stack that rollbacks walk: `active`, `superseded`,
-- `rolled_back`, and `restored` for a row whose pair a later rollback row
-- brought back (it keeps its own actor, reason and time).
ALTER TABLE activations ADD COLUMN kind TEXT NOT NULL DEFAULT 'activate';
