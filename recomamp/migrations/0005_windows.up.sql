-- Windows are the unit of truth: a run remembers what it sent and where it loaded; at most one active
-- run per (schedule, window); backfills, catch-up and cancellation.

ALTER TABLE schedule_runs DROP CONSTRAINT schedule_runs_trigger_check;
ALTER TABLE schedule_runs ADD CONSTRAINT schedule_runs_trigger_check
    CHECK (trigger IN ('schedule', 'manual', 'backfill', 'catch_up', 'rerun'));
ALTER TABLE schedule_runs DROP CONSTRAINT schedule_runs_status_check;
ALTER TABLE schedule_runs ADD CONSTRAINT schedule_runs_status_check
    CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled', 'skipped'));

ALTER TABLE schedule_runs
    -- Lower runs first: scheduled and manual runs (0) before catch-up (5) and backfills (10).
    ADD COLUMN priority             SMALLINT NOT NULL DEFAULT 0,
    -- What the run sends to AMC, copied from the schedule when the run is created: an edit of the
    -- schedule later never changes what an existing run ran or where it loaded.
    ADD COLUMN query_sql            TEXT NULL,
    ADD COLUMN query_workflow_id    TEXT NULL,
    ADD COLUMN query_parameters     JSONB NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN target_enabled       BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN target_table_name    TEXT NULL,
    ADD COLUMN target_schema_name   TEXT NULL,
    ADD COLUMN target_key_columns   TEXT[] NULL,
    ADD COLUMN cancel_requested_at  TIMESTAMPTZ NULL,
    ADD COLUMN cancelled_by         TEXT NULL,
    -- The downloaded result, kept compressed under the spool until it is safely loaded.
    ADD COLUMN results_path         TEXT NULL,
    ADD COLUMN results_bytes        BIGINT NULL,
    ADD COLUMN results_kept_until   TIMESTAMPTZ NULL,
    ADD COLUMN amc_expire_time      TIMESTAMPTZ NULL;

UPDATE schedule_runs r SET
    query_sql = s.sql_query, query_workflow_id = s.workflow_id, query_parameters = s.parameter_values,
    target_enabled = COALESCE(s.snowflake_enabled, FALSE), target_table_name = s.snowflake_table_name,
    target_schema_name = s.snowflake_schema_name, target_key_columns = s.snowflake_key_columns
FROM workflow_schedules s WHERE s.id = r.schedule_id;

ALTER TABLE schedule_runs DROP CONSTRAINT schedule_runs_schedule_id_scheduled_for_key;
-- One run per scheduled fire (manual runs, backfills and reruns are keyed by their window instead).
CREATE UNIQUE INDEX schedule_runs_one_per_fire ON schedule_runs (schedule_id, scheduled_for)
    WHERE trigger IN ('schedule', 'catch_up');
-- At most one active run per window of a schedule, whatever started it.
CREATE UNIQUE INDEX schedule_runs_one_active_window ON schedule_runs (schedule_id, window_start, window_end)
    WHERE status IN ('pending', 'running');
-- The dispatcher's candidates: each instance's open runs in claim order (priority, then due time).
DROP INDEX schedule_runs_open;
CREATE INDEX schedule_runs_claimable ON schedule_runs (instance_id, priority, scheduled_for, id)
    WHERE status IN ('pending', 'running');
-- Leased runs are counted through the index above.
DROP INDEX schedule_runs_leased;
-- instance_id is copied from the schedule, whose own key cascades a deleted instance to its runs: a second
-- foreign key only cost a check per run created.
ALTER TABLE schedule_runs DROP CONSTRAINT schedule_runs_instance_id_fkey;

ALTER TABLE workflow_schedules
    -- After downtime: 'coalesce' runs the latest missed window and records the others as skipped;
    -- 'catch_up' runs every missed window, oldest first, up to catch_up_limit.
    ADD COLUMN misfire_policy  TEXT NOT NULL DEFAULT 'coalesce' CHECK (misfire_policy IN ('coalesce', 'catch_up')),
    ADD COLUMN catch_up_limit  INTEGER NOT NULL DEFAULT 31 CHECK (catch_up_limit BETWEEN 1 AND 1000),
    -- Windows that overlap each other (or an edit that moves the grid over loaded windows) without key
    -- columns load each overlapping row once per window: allowed only when asked for.
    ADD COLUMN allow_overlap   BOOLEAN NOT NULL DEFAULT FALSE;
