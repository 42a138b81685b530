-- The master's registry: what it must remember across restarts.
CREATE TABLE agents (
    id            TEXT PRIMARY KEY,
    hostname      TEXT NOT NULL,
    resources     TEXT NOT NULL,      -- Mesos text form: cpus:4;mem:8192;disk:0;ports:[31000-32000]
    attributes    TEXT NOT NULL,      -- rack:r1;zone:a
    registered_at BIGINT NOT NULL     -- milliseconds since the Unix epoch
);

CREATE TABLE frameworks (
    id                       TEXT PRIMARY KEY,
    name                     TEXT NOT NULL,
    role                     TEXT NOT NULL,
    failover_timeout_seconds DOUBLE PRECISION NOT NULL,
    webui_url                TEXT NOT NULL,
    registered_at            BIGINT NOT NULL,
    removed_at               BIGINT          -- set once the framework is torn down; its id is never reused
);
