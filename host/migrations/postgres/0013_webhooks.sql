-- Webhook subscriptions and their deliveries (issue 22). A subscription
-- follows the change feed from `cursor` (a `changes.pos`): a host takes the
-- subscription's row, turns the changes after the cursor into deliveries and
-- moves the cursor in one transaction, so each change is queued once per
-- subscription (and UNIQUE says so again).
CREATE TABLE webhooks (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    url             TEXT NOT NULL,
    types           TEXT NOT NULL,
    description     TEXT,
    enabled         BIGINT NOT NULL,
    secret          TEXT NOT NULL,
    previous_secret TEXT,
    previous_until  BIGINT,
    cursor          BIGINT NOT NULL,
    failing_since   BIGINT,
    disabled_reason TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX webhooks_tenant ON webhooks (tenant_id, created_at);

-- One message to one subscription. `ordering` is the customer it is about
-- ('' for none): a delivery is sent only when no earlier one of the same
-- subscription and ordering is still pending, so a customer's changes arrive
-- in order. Claimed with a lease like wakes; the result is written only by
-- the claim that still holds it.
CREATE TABLE deliveries (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id      TEXT NOT NULL,
    tenant_id       TEXT NOT NULL,
    message_id      TEXT NOT NULL,
    type            TEXT NOT NULL,
    ordering        TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_at         BIGINT NOT NULL,
    claimed_by      TEXT,
    lease_until     BIGINT,
    created_at      BIGINT NOT NULL,
    done_at         BIGINT,
    last_status     BIGINT,
    last_error      TEXT,
    UNIQUE (webhook_id, message_id)
);
CREATE INDEX deliveries_due ON deliveries (next_at) WHERE status = 'pending';
CREATE INDEX deliveries_order ON deliveries (webhook_id, ordering, seq) WHERE status = 'pending';
CREATE INDEX deliveries_claim ON deliveries (claimed_by) WHERE claimed_by IS NOT NULL;
CREATE INDEX deliveries_log ON deliveries (webhook_id, seq);

-- Every attempt, for the delivery log.
CREATE TABLE delivery_attempts (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_seq    BIGINT NOT NULL,
    webhook_id      TEXT NOT NULL,
    at              BIGINT NOT NULL,
    status          BIGINT,
    error           TEXT,
    latency_ms      BIGINT NOT NULL,
    response        TEXT,
    host            TEXT NOT NULL
);
CREATE INDEX delivery_attempts_of ON delivery_attempts (delivery_seq, seq);
