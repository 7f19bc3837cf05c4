DROP INDEX IF EXISTS workflow_schedules_snowflake_enabled;
ALTER TABLE workflow_schedules
    DROP CONSTRAINT IF EXISTS workflow_schedules_snowflake_table_when_enabled,
    DROP COLUMN IF EXISTS snowflake_key_columns,
    DROP COLUMN IF EXISTS snowflake_schema_name,
    DROP COLUMN IF EXISTS snowflake_table_name,
    DROP COLUMN IF EXISTS snowflake_enabled;
