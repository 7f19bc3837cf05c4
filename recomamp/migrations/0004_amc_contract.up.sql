-- Amazon's published contract: instance endpoints from discovery, and the daily ad-hoc quota.

-- `apiEndpoint` from GET /amc/instances; when set, it replaces the [amazon.amc_base_url] region table.
ALTER TABLE amc_instances ADD COLUMN api_endpoint TEXT NULL;

-- Every POST /workflowExecutions we send counts against AMC's ad-hoc quota of the instance
-- (30 a day at this time), across all workflow ids and all replicas. One row per POST, written
-- before the POST goes out; rows older than the quota window are pruned.
CREATE TABLE amc_submissions (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The AMC instance as AMC counts it: its endpoint and id (two users may share one instance).
    instance_key  TEXT NOT NULL,
    run_id        BIGINT NULL REFERENCES schedule_runs (id) ON DELETE SET NULL,
    submitted_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX amc_submissions_window ON amc_submissions (instance_key, submitted_at);

-- AMC refused a POST for its quota although our own count had room (another tool shares the
-- instance): nothing is submitted to it before `blocked_until`.
CREATE TABLE amc_quota_blocks (
    instance_key   TEXT PRIMARY KEY,
    blocked_until  TIMESTAMPTZ NOT NULL,
    reason         TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
