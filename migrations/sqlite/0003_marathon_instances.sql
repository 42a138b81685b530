-- The services framework's own framework id, and the tasks it launched, so that a restart loses nothing.
CREATE TABLE marathon_framework (
    name         TEXT PRIMARY KEY,  -- always 'marathon'
    framework_id TEXT NOT NULL
);

CREATE TABLE marathon_instances (
    task_id   TEXT PRIMARY KEY,
    app_id    TEXT NOT NULL,
    version   TEXT NOT NULL,
    agent_id  TEXT NOT NULL,
    host      TEXT NOT NULL,
    ports     TEXT NOT NULL,          -- comma-separated host ports
    staged_at BIGINT NOT NULL         -- milliseconds since the Unix epoch
);
