-- The services framework (marathon/): apps and every version of their definitions.
CREATE TABLE marathon_apps (
    id         TEXT PRIMARY KEY,   -- /prod/web
    version    TEXT NOT NULL,      -- 2026-11-23T05:47:01.123Z
    definition TEXT NOT NULL       -- the app's JSON
);

CREATE TABLE marathon_app_versions (
    id         TEXT NOT NULL,
    version    TEXT NOT NULL,
    definition TEXT NOT NULL,
    PRIMARY KEY (id, version)
);
