-- Stagecraft core schema (PostgreSQL). Keep in step with ../sqlite/0001_core.sql:
-- the same tables and columns; only the types and id generation differ.
-- Times are BIGINT milliseconds since the Unix epoch, UTC. JSON is TEXT.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    role        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    label       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE customers (
    tenant_id        TEXT NOT NULL REFERENCES tenants(id),
    id               TEXT NOT NULL,
    name             TEXT,
    source           TEXT,
    stage            TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    orders           BIGINT NOT NULL DEFAULT 0,
    purchase_days    BIGINT NOT NULL DEFAULT 0,
    spend_cents      BIGINT NOT NULL DEFAULT 0,
    first_order_at   BIGINT,
    last_order_at    BIGINT,
    last_contact_at  BIGINT,
    complaints       BIGINT NOT NULL DEFAULT 0,
    referrals        BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX customers_stage ON customers (tenant_id, stage);

CREATE TABLE customer_fields (
    tenant_id    TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    key          TEXT NOT NULL,
    value        TEXT NOT NULL,
    sensitive    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, customer_id, key)
);

CREATE TABLE customer_tags (
    tenant_id    TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    tag          TEXT NOT NULL,
    PRIMARY KEY (tenant_id, customer_id, tag)
);
CREATE INDEX customer_tags_tag ON customer_tags (tenant_id, tag);

CREATE TABLE events (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    tenant_id        TEXT NOT NULL,
    customer_id      TEXT NOT NULL,
    kind             TEXT NOT NULL,
    channel          TEXT,
    at               BIGINT NOT NULL,
    day              BIGINT NOT NULL,
    amount_cents     BIGINT,
    fields           TEXT NOT NULL,
    idempotency_key  TEXT,
    outcome          TEXT NOT NULL,
    recorded_at      BIGINT NOT NULL,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX events_customer_at ON events (tenant_id, customer_id, at);

CREATE TABLE stage_moves (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    from_stage      TEXT,
    to_stage        TEXT NOT NULL,
    reason          TEXT NOT NULL,
    plugin          TEXT NOT NULL,
    plugin_version  TEXT NOT NULL,
    event_id        TEXT,
    at              BIGINT NOT NULL
);
CREATE INDEX stage_moves_customer ON stage_moves (tenant_id, customer_id, at);

CREATE TABLE scores (
    tenant_id       TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    plugin          TEXT NOT NULL,
    plugin_version  TEXT NOT NULL,
    value           DOUBLE PRECISION NOT NULL,
    band            TEXT,
    reasons         TEXT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, customer_id, plugin)
);
CREATE INDEX scores_band ON scores (tenant_id, plugin, band);

CREATE TABLE score_history (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    plugin          TEXT NOT NULL,
    plugin_version  TEXT NOT NULL,
    value           DOUBLE PRECISION NOT NULL,
    band            TEXT,
    reasons         TEXT NOT NULL,
    event_id        TEXT,
    at              BIGINT NOT NULL
);
CREATE INDEX score_history_customer ON score_history (tenant_id, customer_id, at);

CREATE TABLE memberships (
    tenant_id    TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    plugin       TEXT NOT NULL,
    segment      TEXT NOT NULL,
    reason       TEXT NOT NULL,
    since        BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, customer_id, plugin, segment)
);
CREATE INDEX memberships_segment ON memberships (tenant_id, segment);

CREATE TABLE follow_ups (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    due_at       BIGINT NOT NULL,
    note         TEXT NOT NULL,
    status       TEXT NOT NULL,
    plugin       TEXT,
    event_id     TEXT,
    created_at   BIGINT NOT NULL,
    done_at      BIGINT
);
CREATE INDEX follow_ups_customer ON follow_ups (tenant_id, customer_id, status);
CREATE INDEX follow_ups_due ON follow_ups (tenant_id, status, due_at);

CREATE TABLE plugin_failures (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    plugin          TEXT NOT NULL,
    plugin_version  TEXT NOT NULL,
    kind            TEXT NOT NULL,
    message         TEXT NOT NULL,
    event_id        TEXT,
    at              BIGINT NOT NULL
);
CREATE INDEX plugin_failures_customer ON plugin_failures (tenant_id, customer_id, at);

CREATE TABLE plugin_versions (
    tenant_id    TEXT NOT NULL,
    name         TEXT NOT NULL,
    version      TEXT NOT NULL,
    digest       TEXT NOT NULL,
    manifest     TEXT NOT NULL,
    wasm         BYTEA NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name, version)
);

CREATE TABLE rule_sets (
    tenant_id    TEXT NOT NULL,
    plugin       TEXT NOT NULL,
    version      BIGINT NOT NULL,
    rules        TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, plugin, version)
);

CREATE TABLE enabled_plugins (
    tenant_id         TEXT NOT NULL,
    plugin            TEXT NOT NULL,
    version           TEXT NOT NULL,
    rules_version     BIGINT,
    owns_lifecycle    BIGINT NOT NULL DEFAULT 0,
    enabled_at        BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, plugin)
);

CREATE TABLE audit_log (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, at);
