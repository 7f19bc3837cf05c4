DROP INDEX schedule_runs_by_window;
DROP INDEX schedule_runs_loaded;
ALTER TABLE workflow_schedules DROP COLUMN late_since;
ALTER TABLE workflow_schedules DROP COLUMN freshness_grace_seconds;
