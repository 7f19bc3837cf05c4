DROP INDEX IF EXISTS workflow_schedules_live_by_name;
ALTER TABLE workflow_schedules DROP CONSTRAINT IF EXISTS workflow_schedules_archived_inactive;
ALTER TABLE workflow_schedules DROP COLUMN IF EXISTS archived_at;
ALTER TABLE snowflake_configurations DROP COLUMN IF EXISTS secret_references;
ALTER TABLE users DROP COLUMN IF EXISTS region;
