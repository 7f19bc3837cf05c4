"""`recomamp status` and the metrics' database gauges: one reading of the installation, and what needs a person."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from recomamp.domain.schedules import cadence_seconds
from recomamp.services.coverage import late_schedules
from recomamp.store import status as status_store
from recomamp.store.db import Queryable
from recomamp.store.schedules import cadence_from_row

# A replica whose heartbeat is older than this is not counted as alive.
REPLICA_ALIVE_SECONDS = 120.0


async def read_status(connection: Queryable, *, quota_window_seconds: float) -> dict[str, Any]:
    snapshot = await status_store.snapshot(connection, quota_window_seconds=quota_window_seconds)
    # Each schedule's cadence walks its next fires in Python: about 40 µs each, so 0.4 s for 10,000
    # schedules, every refresh. Off the event loop, so runs and heartbeats never wait behind it.
    snapshot["schedules"] = await asyncio.to_thread(schedule_gauges, snapshot.pop("schedules"), datetime.now(UTC))
    snapshot["users_needing_reauth"] = len(snapshot["users_needing_reauth_list"])
    for replica in snapshot["replicas"]:  # EXTRACT(EPOCH …) is NUMERIC: a number, not a Decimal, for JSON and gauges
        replica["seconds_since_heartbeat"] = float(replica["seconds_since_heartbeat"])
    snapshot["replicas_alive"] = [
        r
        for r in snapshot["replicas"]
        if r["stopped_at"] is None and r["seconds_since_heartbeat"] < REPLICA_ALIVE_SECONDS
    ]
    snapshot["late_schedules"] = await late_schedules(connection)
    snapshot["attention"] = needs_attention(snapshot)
    return snapshot


def schedule_gauges(rows: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    schedules = []
    for row in rows:
        try:
            cadence = cadence_seconds(cadence_from_row(row), now)
        except ValueError:  # a schedule the daemon could not fire either: it is reported elsewhere
            cadence = 0.0
        schedules.append(
            {
                "id": row["id"],
                "seconds_since_success": float(row["seconds_since_success"] or 0.0),
                "ever_succeeded": row["ever_succeeded"],
                "cadence_seconds": cadence,
            }
        )
    return schedules


def needs_attention(snapshot: dict[str, Any]) -> list[str]:
    """What a person must act on, each with the command that fixes it."""
    reasons = [
        f"{user['email']} needs to re-authenticate via Amazon OAuth: `recomamp users authorize {user['email']}`"
        for user in snapshot["users_needing_reauth_list"]
    ]
    reasons += [
        f"schedule {s['id']} ({s['name']}, {s['user_email']}) is paused: {s['paused_reason'] or 'paused'}; "
        f"`recomamp schedules resume {s['id']}`"
        for s in snapshot["paused_schedules_list"]
    ]
    reasons += [
        f"schedule {s['id']} ({s['name']}, {s['user_email']}) is late since {s['late_since']:%Y-%m-%d %H:%M %Z}: "
        f"newer data is overdue; see why with `{s['command']}`"
        for s in snapshot.get("late_schedules", [])
    ]
    if not snapshot["replicas_alive"]:
        reasons.append("no replica is alive: `systemctl status recomamp` on each host")
    return reasons
