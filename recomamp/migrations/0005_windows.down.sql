ALTER TABLE workflow_schedules DROP COLUMN allow_overlap, DROP COLUMN catch_up_limit, DROP COLUMN misfire_policy;
ALTER TABLE schedule_runs ADD CONSTRAINT schedule_runs_instance_id_fkey
    FOREIGN KEY (instance_id) REFERENCES amc_instances (id) ON DELETE CASCADE;
CREATE INDEX schedule_runs_leased ON schedule_runs (instance_id) WHERE lease_token IS NOT NULL;
DROP INDEX schedule_runs_claimable;
CREATE INDEX schedule_runs_open ON schedule_runs (scheduled_for, id) WHERE status IN ('pending', 'running');
DROP INDEX schedule_runs_one_active_window;
DROP INDEX schedule_runs_one_per_fire;
DELETE FROM schedule_runs WHERE trigger NOT IN ('schedule', 'manual') OR status = 'skipped';
DELETE FROM schedule_runs a USING schedule_runs b
WHERE a.schedule_id = b.schedule_id AND a.scheduled_for = b.scheduled_for AND a.id > b.id;
ALTER TABLE schedule_runs ADD CONSTRAINT schedule_runs_schedule_id_scheduled_for_key UNIQUE (schedule_id, scheduled_for);
ALTER TABLE schedule_runs
    DROP COLUMN amc_expire_time,
    DROP COLUMN results_kept_until,
    DROP COLUMN results_bytes,
    DROP COLUMN results_path,
    DROP COLUMN cancelled_by,
    DROP COLUMN cancel_requested_at,
    DROP COLUMN target_key_columns,
    DROP COLUMN target_schema_name,
    DROP COLUMN target_table_name,
    DROP COLUMN target_enabled,
    DROP COLUMN query_parameters,
    DROP COLUMN query_workflow_id,
    DROP COLUMN query_sql,
    DROP COLUMN priority;
ALTER TABLE schedule_runs DROP CONSTRAINT schedule_runs_status_check;
ALTER TABLE schedule_runs ADD CONSTRAINT schedule_runs_status_check
    CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE schedule_runs DROP CONSTRAINT schedule_runs_trigger_check;
ALTER TABLE schedule_runs ADD CONSTRAINT schedule_runs_trigger_check CHECK (trigger IN ('schedule', 'manual'));
