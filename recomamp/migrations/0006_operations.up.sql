-- Operations: a durable outbox for alerts, and the replicas that are alive (for `recomamp status`).

-- An event is written in the same transaction as the state change it reports; a sender task takes
-- events with SKIP LOCKED, so each reaches each webhook once over all replicas.
CREATE TABLE notifications (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event              TEXT NOT NULL,
    -- Groups events for rate limits (a schedule id for run_failed) and for the once-per-mark rule.
    subject            TEXT NULL,
    payload            JSONB NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Webhook targets (by name) that have this event already; a retry goes only to the others.
    delivered_to       TEXT[] NOT NULL DEFAULT '{}',
    done_at            TIMESTAMPTZ NULL,
    failed_at          TIMESTAMPTZ NULL,
    last_error         TEXT NULL
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE done_at IS NULL AND failed_at IS NULL;

CREATE TABLE replicas (
    name               TEXT PRIMARY KEY,
    hostname           TEXT NOT NULL,
    pid                INTEGER NOT NULL,
    version            TEXT NOT NULL,
    started_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_heartbeat_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    runs_held          INTEGER NOT NULL DEFAULT 0,
    stopped_at         TIMESTAMPTZ NULL
);
