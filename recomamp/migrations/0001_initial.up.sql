-- Users, their AMC instances and Snowflake configurations, schedules, and one row per firing of a schedule.

CREATE TABLE users (
    id                       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email                    TEXT NOT NULL,
    -- LWA tokens, Fernet-encrypted (recomamp.crypto); never stored in plain text.
    refresh_token_encrypted  TEXT NULL,
    access_token_encrypted   TEXT NULL,
    access_token_expires_at  TIMESTAMPTZ NULL,
    token_refreshed_at       TIMESTAMPTZ NULL,
    needs_reauth             BOOLEAN NOT NULL DEFAULT FALSE,
    needs_reauth_reason      TEXT NULL,
    needs_reauth_at          TIMESTAMPTZ NULL,
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT users_email_not_blank CHECK (btrim(email) <> '')
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE amc_instances (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id        BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            TEXT NULL,
    instance_id     TEXT NOT NULL,
    advertiser_id   TEXT NOT NULL,
    marketplace_id  TEXT NOT NULL,
    region          TEXT NOT NULL DEFAULT 'na' CHECK (region IN ('na', 'eu', 'fe')),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (owner_id, instance_id)
);

CREATE TABLE snowflake_configurations (
    id                                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id                           BIGINT NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    account                           TEXT NOT NULL,
    username                          TEXT NOT NULL,
    warehouse                         TEXT NULL,
    database_name                     TEXT NOT NULL,
    default_schema                    TEXT NOT NULL DEFAULT 'PUBLIC',
    role                              TEXT NULL,
    auth_method                       TEXT NOT NULL CHECK (auth_method IN ('password', 'key_pair')),
    password_encrypted                TEXT NULL,
    private_key_encrypted             TEXT NULL,
    private_key_passphrase_encrypted  TEXT NULL,
    host                              TEXT NULL,
    port                              INTEGER NULL CHECK (port BETWEEN 1 AND 65535),
    protocol                          TEXT NULL CHECK (protocol IN ('http', 'https')),
    is_active                         BOOLEAN NOT NULL DEFAULT TRUE,
    created_at                        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT snowflake_configurations_secret_for_method CHECK (
        (auth_method = 'password' AND password_encrypted IS NOT NULL)
        OR (auth_method = 'key_pair' AND private_key_encrypted IS NOT NULL)
    )
);

CREATE TABLE workflow_schedules (
    id                     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                   TEXT NOT NULL,
    owner_id               BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    instance_id            BIGINT NOT NULL REFERENCES amc_instances (id) ON DELETE CASCADE,
    -- What it runs: ad-hoc SQL, or a saved AMC workflow with parameter values. Exactly one.
    sql_query              TEXT NULL,
    workflow_id            TEXT NULL,
    parameter_values       JSONB NOT NULL DEFAULT '{}'::jsonb,
    preset                 TEXT NOT NULL CHECK (preset IN ('daily', 'weekly', 'monthly', 'custom')),
    time_of_day            TIME NULL,
    day_of_week            SMALLINT NULL CHECK (day_of_week BETWEEN 0 AND 6),  -- 0 = Monday
    day_of_month           SMALLINT NULL CHECK (day_of_month BETWEEN 1 AND 31),
    cron_expression        TEXT NULL,
    timezone               TEXT NOT NULL DEFAULT 'UTC',
    -- NULL lookback means the preset's default: 1 day, 7 days, or one calendar month.
    lookback_days          INTEGER NULL CHECK (lookback_days > 0),
    data_lag_days          INTEGER NOT NULL DEFAULT 14 CHECK (data_lag_days >= 0),
    next_run_at            TIMESTAMPTZ NULL,
    is_active              BOOLEAN NOT NULL DEFAULT TRUE,
    paused_reason          TEXT NULL,
    consecutive_failures   INTEGER NOT NULL DEFAULT 0,
    auto_pause_on_failure  BOOLEAN NOT NULL DEFAULT FALSE,
    failure_threshold      INTEGER NOT NULL DEFAULT 3 CHECK (failure_threshold >= 1),
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT workflow_schedules_one_query CHECK ((sql_query IS NULL) <> (workflow_id IS NULL)),
    CONSTRAINT workflow_schedules_preset_fields CHECK (
        (preset = 'daily' AND time_of_day IS NOT NULL)
        OR (preset = 'weekly' AND time_of_day IS NOT NULL AND day_of_week IS NOT NULL)
        OR (preset = 'monthly' AND time_of_day IS NOT NULL AND day_of_month IS NOT NULL)
        OR (preset = 'custom' AND cron_expression IS NOT NULL)
    )
);
-- The poll's one query: due, active schedules in due order.
CREATE INDEX workflow_schedules_due ON workflow_schedules (next_run_at) WHERE is_active;
CREATE INDEX workflow_schedules_owner ON workflow_schedules (owner_id);

CREATE TABLE schedule_runs (
    id                    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schedule_id           BIGINT NOT NULL REFERENCES workflow_schedules (id) ON DELETE CASCADE,
    -- Denormalised from the schedule so that per-instance concurrency is one indexed count.
    instance_id           BIGINT NOT NULL REFERENCES amc_instances (id) ON DELETE CASCADE,
    scheduled_for         TIMESTAMPTZ NOT NULL,
    trigger               TEXT NOT NULL DEFAULT 'schedule' CHECK (trigger IN ('schedule', 'manual')),
    missed_fires_skipped  INTEGER NOT NULL DEFAULT 0,
    status                TEXT NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    -- The last step that was persisted; a run adopted after a crash resumes from here.
    step                  TEXT NOT NULL DEFAULT 'queued'
                          CHECK (step IN ('queued', 'token', 'submitting', 'submitted', 'downloading',
                                          'uploading', 'finished')),
    attempt               INTEGER NOT NULL DEFAULT 0,
    lease_owner           TEXT NULL,
    lease_expires_at      TIMESTAMPTZ NULL,
    window_start          TIMESTAMPTZ NULL,
    window_end            TIMESTAMPTZ NULL,
    window_timezone       TEXT NULL,
    -- Written before the POST: it lets a retry find an execution whose POST answered with an error.
    submit_marker         TEXT NULL,
    submit_started_at     TIMESTAMPTZ NULL,
    amc_execution_id      TEXT NULL,
    amc_status            TEXT NULL,
    amc_status_reason     TEXT NULL,
    result_files          INTEGER NULL,
    result_rows           BIGINT NULL,
    snowflake_status      TEXT NOT NULL DEFAULT 'skipped'
                          CHECK (snowflake_status IN ('skipped', 'pending', 'uploading', 'completed', 'failed')),
    snowflake_table       TEXT NULL,
    snowflake_rows        BIGINT NULL,
    snowflake_error       TEXT NULL,
    error_kind            TEXT NULL,
    error_message         TEXT NULL,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at            TIMESTAMPTZ NULL,
    token_checked_at      TIMESTAMPTZ NULL,
    submitted_at          TIMESTAMPTZ NULL,
    amc_finished_at       TIMESTAMPTZ NULL,
    downloaded_at         TIMESTAMPTZ NULL,
    snowflake_finished_at TIMESTAMPTZ NULL,
    finished_at           TIMESTAMPTZ NULL,
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (schedule_id, scheduled_for)
);
-- Workers look only at runs that are not finished.
CREATE INDEX schedule_runs_open ON schedule_runs (scheduled_for) WHERE status IN ('pending', 'running');
CREATE INDEX schedule_runs_schedule ON schedule_runs (schedule_id, scheduled_for DESC);
