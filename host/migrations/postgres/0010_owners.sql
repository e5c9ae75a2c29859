-- Customers have an owner: the agent who looks after them (set by the API, an
-- import's `owner` column or a plugin's `owner` field). Their open follow-ups
-- make that agent's work list, soonest due first (follow_ups_due serves it).
ALTER TABLE customers ADD COLUMN owner TEXT;
CREATE INDEX customers_owner ON customers (tenant_id, owner);
