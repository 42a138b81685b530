-- Tokens: only a SHA-256 hash of each is kept. A revoked token keeps its row (for the record).
CREATE TABLE tokens (
    id              TEXT PRIMARY KEY,      -- tok_ and 12 hex digits, shown by `keel token list`
    name            TEXT NOT NULL,         -- the principal
    role            TEXT NOT NULL,         -- viewer, operator, admin, framework or agent
    framework_roles TEXT NOT NULL,         -- comma-separated; empty means any
    hash            TEXT NOT NULL UNIQUE,  -- hex SHA-256 of the token
    created_at      BIGINT NOT NULL,       -- milliseconds since the Unix epoch
    revoked_at      BIGINT
);
-- One active token per name, so a name is one principal.
CREATE UNIQUE INDEX tokens_active_name ON tokens (name) WHERE revoked_at IS NULL;

-- The principal that first registered an agent id or created a framework id owns it.
ALTER TABLE agents ADD COLUMN principal TEXT;
ALTER TABLE frameworks ADD COLUMN principal TEXT;

-- Every write, allowed or not.
CREATE TABLE audit (
    id        BIGSERIAL PRIMARY KEY,
    at        BIGINT NOT NULL,             -- milliseconds since the Unix epoch
    principal TEXT NOT NULL,               -- '-' when no valid credential came with the request
    action    TEXT NOT NULL,               -- e.g. 'POST /v2/apps', 'subscribe', 'register agent'
    target    TEXT NOT NULL,
    outcome   TEXT NOT NULL,               -- ok, denied or failed
    status    BIGINT NOT NULL              -- HTTP status, or 0 for gRPC
);
CREATE INDEX audit_at ON audit (at);
