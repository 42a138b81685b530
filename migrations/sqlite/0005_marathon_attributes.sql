-- The agent attributes of each launched task, so that constraints on attributes (GROUP_BY, UNIQUE, MAX_PER…)
-- count the running instances right after a restart of the services framework. A JSON list of
-- [name, value] pairs; '' for tasks recorded before this column existed.
ALTER TABLE marathon_instances ADD COLUMN attributes TEXT NOT NULL DEFAULT '';
