-- Fenced runs. Every claim of a run mints a lease token; every write on the run is conditioned on
-- (id, lease_token), so a replica that lost its claim (it stalled past the lease and another replica
-- adopted the run, or the run was cancelled) matches no row and stops before its next side effect.
ALTER TABLE schedule_runs
    ADD COLUMN lease_token    UUID NULL,
    -- A deferred run (a transient failure, or a wait for AMC's quota) is not claimed before this.
    ADD COLUMN not_before     TIMESTAMPTZ NULL,
    ADD COLUMN wait_reason    TEXT NULL,
    -- How often the run was leased, and how often a lease that had started work ended without an
    -- outcome, a defer or a release (the replica died or stalled mid-run). `attempt` counts the claims
    -- that started work with no progress since the counted one before (the same step, kept in
    -- attempt_step): lease churn without work never counts, and neither does a claim that advanced the
    -- run, so only a run stuck at one step exhausts [daemon] max_run_attempts.
    ADD COLUMN claims         INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN interruptions  INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN lease_worked   BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN attempt_step   TEXT NULL;

-- A deferred run used to wait with lease_expires_at in the future and no owner: give it a not_before.
UPDATE schedule_runs SET not_before = lease_expires_at, lease_expires_at = NULL
WHERE lease_owner IS NULL AND lease_expires_at IS NOT NULL AND status IN ('pending', 'running');
-- Runs held by an owner when this migration runs get a token, so their holders' writes are refused:
-- they are adopted like the runs of a crashed replica.
UPDATE schedule_runs SET lease_token = gen_random_uuid() WHERE lease_owner IS NOT NULL;
UPDATE schedule_runs SET status = 'pending' WHERE status = 'running' AND lease_owner IS NULL;

DROP INDEX schedule_runs_open;
-- The dispatcher's candidates: open runs, by priority and due time.
CREATE INDEX schedule_runs_open ON schedule_runs (scheduled_for, id) WHERE status IN ('pending', 'running');
-- The heartbeat and the limits: leased runs.
CREATE INDEX schedule_runs_leased ON schedule_runs (instance_id) WHERE lease_token IS NOT NULL;

-- Single-flight token refresh over all replicas, without a transaction held across the HTTP call:
-- a short lease on the user row says who refreshes; the others wait for its result.
ALTER TABLE users
    ADD COLUMN refresh_lease_token  UUID NULL,
    ADD COLUMN refresh_lease_until  TIMESTAMPTZ NULL;
