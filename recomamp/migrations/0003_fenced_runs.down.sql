ALTER TABLE users DROP COLUMN refresh_lease_until, DROP COLUMN refresh_lease_token;
DROP INDEX schedule_runs_leased;
DROP INDEX schedule_runs_open;
CREATE INDEX schedule_runs_open ON schedule_runs (scheduled_for) WHERE status IN ('pending', 'running');
UPDATE schedule_runs SET lease_expires_at = not_before WHERE lease_token IS NULL AND not_before IS NOT NULL;
UPDATE schedule_runs SET status = 'running' WHERE status = 'pending' AND step <> 'queued';
ALTER TABLE schedule_runs
    DROP COLUMN attempt_step,
    DROP COLUMN lease_worked,
    DROP COLUMN interruptions,
    DROP COLUMN claims,
    DROP COLUMN wait_reason,
    DROP COLUMN not_before,
    DROP COLUMN lease_token;
