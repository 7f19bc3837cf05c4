"""What an operator (and the metrics' gauges) read about the whole installation, in a few cheap queries.

Read-only, bounded: counts and small lists (at most one row per active schedule, per replica, per user
needing re-authentication, per AMC instance).
"""

from __future__ import annotations

from typing import Any

from recomamp.store.db import Queryable

USERS_NEEDING_REAUTH = """
SELECT email, needs_reauth_reason AS reason, needs_reauth_at AS since FROM users WHERE needs_reauth ORDER BY email
"""

PAUSED_SCHEDULES = """
SELECT s.id, s.name, u.email AS user_email, s.paused_reason,
       COALESCE(s.paused_reason LIKE 'auto-paused%', FALSE) AS auto_paused
FROM workflow_schedules s JOIN users u ON u.id = s.owner_id
WHERE NOT s.is_active ORDER BY s.id
"""

# Oldest runnable run that nobody holds: pending, past any wait, without a live lease.
OLDEST_DUE = """
SELECT EXTRACT(EPOCH FROM now() - min(scheduled_for)) FROM schedule_runs
WHERE status = 'pending' AND (not_before IS NULL OR not_before <= now())
  AND (lease_token IS NULL OR lease_expires_at <= now())
"""

IN_FLIGHT = """
SELECT i.instance_id, count(*) AS runs FROM schedule_runs r JOIN amc_instances i ON i.id = r.instance_id
WHERE r.status = 'running' GROUP BY i.instance_id ORDER BY i.instance_id
"""

DUE_WITHIN = """
SELECT count(*) FROM workflow_schedules WHERE is_active AND next_run_at <= now() + make_interval(secs => $1)
"""

FAILURES_SINCE = """
SELECT COALESCE(error_kind, 'unknown') AS kind, count(*) AS runs FROM schedule_runs
WHERE status = 'failed' AND finished_at > now() - make_interval(secs => $1)
GROUP BY 1 ORDER BY 2 DESC, 1
"""

QUOTA_USED = """
SELECT instance_key, count(*) AS used FROM amc_submissions
WHERE submitted_at > now() - make_interval(secs => $1) GROUP BY instance_key ORDER BY instance_key
"""

# Each active schedule's last success (NULL: never), with what its cadence is computed from.
SCHEDULES = """
SELECT s.id, s.preset, s.timezone, s.time_of_day, s.day_of_week, s.day_of_month, s.cron_expression,
       s.lookback_days, s.data_lag_days, s.created_at,
       EXTRACT(EPOCH FROM now() - COALESCE(last.finished_at, s.created_at)) AS seconds_since_success,
       last.finished_at IS NOT NULL AS ever_succeeded
FROM workflow_schedules s
LEFT JOIN LATERAL (
    SELECT finished_at FROM schedule_runs r
    WHERE r.schedule_id = s.id AND r.status = 'succeeded' ORDER BY finished_at DESC LIMIT 1
) last ON TRUE
WHERE s.is_active ORDER BY s.id
"""

NOTIFICATIONS = """
SELECT count(*) FILTER (WHERE done_at IS NULL AND failed_at IS NULL) AS pending,
       count(*) FILTER (WHERE failed_at IS NOT NULL AND failed_at > now() - interval '1 day') AS failed_last_day
FROM notifications
"""


async def snapshot(connection: Queryable, *, quota_window_seconds: float) -> dict[str, Any]:
    """Everything `recomamp status` shows and the gauges export, read in one go."""
    from recomamp.store.replicas import list_replicas

    notifications = await connection.fetchrow(NOTIFICATIONS)
    paused = [dict(r) for r in await connection.fetch(PAUSED_SCHEDULES)]
    return {
        "replicas": await list_replicas(connection),
        "users_needing_reauth_list": [dict(r) for r in await connection.fetch(USERS_NEEDING_REAUTH)],
        "paused_schedules_list": paused,
        "paused_schedules": len(paused),
        "auto_paused_schedules": sum(1 for p in paused if p["auto_paused"]),
        "oldest_due_seconds": float(await connection.fetchval(OLDEST_DUE) or 0.0),
        "in_flight": {r["instance_id"]: int(r["runs"]) for r in await connection.fetch(IN_FLIGHT)},
        "due_next_hour": int(await connection.fetchval(DUE_WITHIN, 3600.0)),
        "failures_last_day": {r["kind"]: int(r["runs"]) for r in await connection.fetch(FAILURES_SINCE, 86400.0)},
        "quota": {r["instance_key"]: int(r["used"]) for r in await connection.fetch(QUOTA_USED, quota_window_seconds)},
        "schedules": [dict(r) for r in await connection.fetch(SCHEDULES)],
        "notifications_pending": int(notifications["pending"]) if notifications else 0,
        "notifications_failed_last_day": int(notifications["failed_last_day"]) if notifications else 0,
    }
