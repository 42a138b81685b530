-- Leadership leases: one row per kind of process that elects a leader ('master', ...). The holder is the
-- leader's advertised URL; the term is the fencing token, raised on every acquisition, and every write a
-- leader makes checks it in the same statement, so the database itself refuses a deposed leader's writes.
-- expires_at is in milliseconds since the Unix epoch, by the database's clock.
CREATE TABLE leases (
    kind       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    term       BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
