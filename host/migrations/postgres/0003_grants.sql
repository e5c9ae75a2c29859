-- Sensitive fields an admin lets a plugin see, per tenant. Only fields the
-- plugin's manifest asks for (`wants-fields`) can be granted.
CREATE TABLE field_grants (
    tenant_id  TEXT NOT NULL,
    plugin     TEXT NOT NULL,
    field      TEXT NOT NULL,
    PRIMARY KEY (tenant_id, plugin, field)
);
