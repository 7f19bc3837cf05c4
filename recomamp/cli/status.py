"""`recomamp status`: one screen an operator reads in five seconds; exit 1 when something needs a person."""

from __future__ import annotations

import argparse
from typing import Any

from recomamp.cli.common import EXIT_NEEDS_ATTENTION, EXIT_OK, add_command, async_handler, database
from recomamp.cli.output import print_json


@async_handler
async def cmd_status(args: argparse.Namespace) -> int:
    from recomamp.services.status import read_status

    async with database(args) as (config, connection):
        status = await read_status(connection, quota_window_seconds=config.amc.quota_window_seconds)
        status["quota_limit"] = config.amc.adhoc_executions_per_day
        status["alerts_configured"] = bool(config.notify.webhook)
    if args.json:
        print_json({key: value for key, value in status.items() if key != "schedules"})
    else:
        print(render(status))
    return EXIT_NEEDS_ATTENTION if status["attention"] else EXIT_OK


def instance_labels(quota: dict[str, int]) -> dict[str, int]:
    """Quota is counted per instance at its host (`https://host/path/amc1`): a person knows the instance id;
    the host is kept only where two hosts share an id."""
    ids = [key.rsplit("/", 1)[-1] for key in quota]
    return {
        (instance if ids.count(instance) == 1 else key): used
        for (key, used), instance in zip(quota.items(), ids, strict=True)
    }


def render(status: dict[str, Any]) -> str:
    lines: list[str] = []
    alive = status["replicas_alive"]
    lines.append(f"replicas alive: {len(alive)}")
    for replica in alive:
        lines.append(
            f"  {replica['name']:<28} last heartbeat {replica['seconds_since_heartbeat']:.0f} s ago, "
            f"{replica['runs_held']} runs held, version {replica['version']}"
        )
    in_flight = status["in_flight"]
    lines.append(
        "runs in flight: "
        + (", ".join(f"{instance} {n}" for instance, n in in_flight.items()) if in_flight else "none")
    )
    lines.append(f"schedules due in the next hour: {status['due_next_hour']}")
    if status["oldest_due_seconds"]:
        lines.append(f"oldest run waiting to be claimed: {status['oldest_due_seconds']:.0f} s")
    failures = status["failures_last_day"]
    lines.append(
        "failures in the last 24 h: "
        + (", ".join(f"{kind} {n}" for kind, n in failures.items()) if failures else "none")
    )
    quota = status["quota"]
    lines.append(
        f"AMC ad-hoc quota used (of {status['quota_limit']} per instance): "
        + (", ".join(f"{instance} {n}" for instance, n in instance_labels(quota).items()) if quota else "none")
    )
    if not status.get("alerts_configured", True):
        kept = status["notifications_pending"]
        lines.append(
            "alerts: off (no [[notify.webhook]] target in the config)"
            + (f"; {kept} event(s) kept, sent once a target is added and `recomamp reload` run" if kept else "")
        )
    elif status["notifications_pending"] or status["notifications_failed_last_day"]:
        lines.append(
            f"alerts: {status['notifications_pending']} waiting to be delivered, "
            f"{status['notifications_failed_last_day']} undeliverable in the last 24 h"
        )
    if status["attention"]:
        lines.append("")
        lines.append("needs a person:")
        lines += [f"  - {reason}" for reason in status["attention"]]
    else:
        lines.append("nothing needs a person")
    return "\n".join(lines)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    add_command(
        commands,
        "status",
        "replicas, runs in flight, failures, users to re-authorize, paused schedules, quota; exit 1 if a person "
        "is needed",
        cmd_status,
        common,
    )
