-- Plugin registry and hot swap (SQLite). Keep in step with ../postgres/0002_registry.sql.

-- Every activation of a (plugin version, rule-set version) pair, newest last.
-- status: 'active' (the current pair), 'superseded' (an earlier pair, rollback can
-- return to it), 'rolled_back' (left by a rollback; never returned to).
CREATE TABLE activations (
    seq            INTEGER PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    plugin         TEXT NOT NULL,
    version        TEXT NOT NULL,
    rules_version  INTEGER,
    status         TEXT NOT NULL,
    actor          TEXT NOT NULL,
    reason         TEXT NOT NULL,
    at             INTEGER NOT NULL
);
CREATE INDEX activations_plugin ON activations (tenant_id, plugin, seq);

-- Bumped on every change of what a tenant runs; hosts poll it as a safety net
-- for missed notifications.
CREATE TABLE tenant_generations (
    tenant_id   TEXT PRIMARY KEY,
    generation  INTEGER NOT NULL
);

-- Plugin versions a circuit breaker took out of service for a tenant.
CREATE TABLE suspensions (
    tenant_id   TEXT NOT NULL,
    plugin      TEXT NOT NULL,
    version     TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, plugin, version)
);

-- Long-running work: dry-runs over many customers, bulk rescores.
CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    params      TEXT NOT NULL,
    done        INTEGER NOT NULL DEFAULT 0,
    total       INTEGER NOT NULL DEFAULT 0,
    result      TEXT,
    error       TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX jobs_tenant ON jobs (tenant_id, created_at);

-- A bulk job cut into ranges of customer ids that hosts claim one at a time.
CREATE TABLE job_chunks (
    job_id      TEXT NOT NULL,
    chunk       INTEGER NOT NULL,
    first_id    TEXT NOT NULL,
    last_id     TEXT NOT NULL,
    customers   INTEGER NOT NULL,
    status      TEXT NOT NULL,
    claimed_by  TEXT,
    claimed_at  INTEGER,
    PRIMARY KEY (job_id, chunk)
);
CREATE INDEX job_chunks_status ON job_chunks (job_id, status);
