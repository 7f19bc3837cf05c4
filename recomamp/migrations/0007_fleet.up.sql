-- Schedules as code (`recomamp plan` / `apply` / `export`): what a fleet file says that the tables did not keep.

-- The user's home region, as the fleet file declares it (their instances default to it).
ALTER TABLE users ADD COLUMN region TEXT NULL CHECK (region IN ('na', 'eu', 'fe'));

-- Where each Snowflake secret came from, as the fleet file named it: {"password": {"file": "/etc/…"}} or
-- {"private_key": {"credential": "NAME"}}. Never a value; `export` writes these back.
ALTER TABLE snowflake_configurations ADD COLUMN secret_references JSONB NULL;

-- A schedule removed from the fleet file (`apply --prune`) is archived, not deleted: its runs and their
-- history stay, a run in flight finishes, and it never fires again (inactive, no next run).
ALTER TABLE workflow_schedules ADD COLUMN archived_at TIMESTAMPTZ NULL;
ALTER TABLE workflow_schedules ADD CONSTRAINT workflow_schedules_archived_inactive
    CHECK (archived_at IS NULL OR NOT is_active);
-- plan and apply read each user's live schedules by name, their natural key.
CREATE INDEX workflow_schedules_live_by_name ON workflow_schedules (owner_id, name) WHERE archived_at IS NULL;
