-- Freshness: how long past the fire that should have loaded newer data a schedule may be before it is late,
-- and the lateness episode it is in (one `schedule_late` event at its start, one `schedule_recovered` at its end).

-- NULL: the default grace (recomamp.domain.coverage.DEFAULT_GRACE, 6 hours).
ALTER TABLE workflow_schedules ADD COLUMN freshness_grace_seconds INTEGER NULL
    CHECK (freshness_grace_seconds BETWEEN 0 AND 31 * 86400);
-- When the current lateness episode began; NULL when the schedule is not late. Written by whichever replica
-- sees the change first, with its event, in one transaction.
ALTER TABLE workflow_schedules ADD COLUMN late_since TIMESTAMPTZ NULL;
-- Each schedule's newest loaded window: one index probe per schedule for the freshness gauges.
CREATE INDEX schedule_runs_loaded ON schedule_runs (schedule_id, window_end DESC) WHERE status = 'succeeded';
-- A schedule's runs by window, for coverage over years of history.
CREATE INDEX schedule_runs_by_window ON schedule_runs (schedule_id, window_start);
