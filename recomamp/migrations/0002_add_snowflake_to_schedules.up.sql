-- Add Snowflake to schedules: every run of a schedule lands in one table, as a time series.
ALTER TABLE workflow_schedules
    ADD COLUMN snowflake_enabled      BOOLEAN DEFAULT FALSE,
    ADD COLUMN snowflake_table_name   TEXT NULL,
    ADD COLUMN snowflake_schema_name  TEXT NULL,   -- NULL: the user's default schema
    ADD COLUMN snowflake_key_columns  TEXT[] NULL; -- NULL: replace the run's window; else MERGE on these

ALTER TABLE workflow_schedules
    ADD CONSTRAINT workflow_schedules_snowflake_table_when_enabled
    CHECK (snowflake_enabled IS NOT TRUE OR snowflake_table_name IS NOT NULL);

CREATE INDEX workflow_schedules_snowflake_enabled ON workflow_schedules (id) WHERE snowflake_enabled;
