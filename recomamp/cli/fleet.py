"""`recomamp plan` / `apply` / `export`: the fleet (users, instances, Snowflake targets, schedules) as files in git.

Exit codes, as Terraform's: plan exits 0 when there is nothing to do, 2 on an invalid file or a change that
apply would refuse, and with --detailed-exitcode 1 when there are changes (a CI drift check).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from recomamp.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    add_command,
    async_handler,
    database,
    now,
)

EXIT_CHANGES = 1  # plan --detailed-exitcode: the database differs from the file


def _print_problems(problems: list[Any], *, as_json: bool) -> None:
    print(f"error: the fleet is invalid ({len(problems)} problem(s)); nothing was read or written:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    if as_json:  # for a CI job that annotates each line of the pull request
        found = [{"file": p.file, "path": p.path, "message": p.message} for p in problems]
        print(json.dumps({"valid": False, "problems": found}, indent=2))


def _value(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str) and "\n" in value:
        first = value.strip().splitlines()[0] if value.strip() else ""
        return f"<{len(value)} characters: {first[:50]}…>"
    if isinstance(value, dict) and set(value) <= {"file", "credential"} and value:
        return " ".join(f"{k} {v}" for k, v in value.items())
    return json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)


def render_plan(result: Any) -> None:
    from recomamp.domain.fleet import Change

    changes: list[Change] = result.changes
    if not changes:
        print("No changes: the database matches the fleet file.")
        return
    user = None
    for change in changes:
        if change.user.lower() != (user or "").lower():
            user = change.user
            print(f"\n{user}")
        label = {"user": "user", "snowflake": "snowflake target"}.get(change.kind, f"{change.kind} {change.name}")
        suffix = f" (id {change.schedule_id})" if change.schedule_id is not None and change.op != "+" else ""
        print(f"  {change.op} {label}{suffix}")
        if change.op == "+" and change.kind == "schedule":
            shown = {f.key: f.new for f in change.fields}
            cadence = (
                f"cron '{shown['cron']}'"
                if shown.get("cron")
                else " ".join(str(shown[k]) for k in ("preset", "day_of_week", "day_of_month", "time") if k in shown)
            )
            target = f" → {shown['snowflake.table']}" if "snowflake.table" in shown else ""
            query = "sql" if "sql" in shown else f"workflow {shown.get('workflow_id')}"
            print(f"      {cadence} {shown.get('timezone', 'UTC')}, {query} on {shown.get('instance')}{target}")
        else:
            for field in change.fields:
                if field.secret:
                    print(f"      {field.key}: (secret changed)")
                elif change.op == "+":
                    print(f"      {field.key}: {_value(field.new)}")
                else:
                    print(f"      {field.key}: {_value(field.old)} → {_value(field.new)}")
        for note in change.notes:
            print(f"      ! {note}")
        if change.refused:
            print(f"      ✗ refused: {change.refused}")
    counts = result.counts()
    line = f"\nPlan: {counts['create']} to create, {counts['change']} to change, {counts['archive']} to archive"
    if not result.prune:
        line += " (schedules missing from the file are kept; --prune archives them)"
    print(line + ".")
    if counts["refused"]:
        print(f"{counts['refused']} change(s) refused (✗ above): apply would write nothing; fix them first.")


def _load_fleet(args: argparse.Namespace) -> Any:
    from recomamp.domain.fleet import FleetInvalid
    from recomamp.services.fleet import load

    try:
        return load(Path(args.file))
    except FleetInvalid as exc:
        _print_problems(exc.problems, as_json=args.json)
        return None


@async_handler
async def cmd_plan(args: argparse.Namespace) -> int:
    from recomamp.crypto import SecretBox
    from recomamp.services.fleet import plan

    fleet = _load_fleet(args)
    if fleet is None:
        return EXIT_BAD_INPUT
    async with database(args) as (config, connection):
        result = await plan(connection, fleet, box=SecretBox(config.security.token_keys), now=now(), prune=args.prune)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        render_plan(result)
    if result.refused:
        return EXIT_BAD_INPUT
    if result.changes and args.detailed_exitcode:
        return EXIT_CHANGES
    return EXIT_OK


@async_handler
async def cmd_apply(args: argparse.Namespace) -> int:
    from recomamp.crypto import SecretBox
    from recomamp.logs import configure_logging
    from recomamp.services.fleet import ApplyLocked, ApplyRefused, PlanResult, apply, operator_name

    if not args.yes and not sys.stdin.isatty():
        raise UsageError("apply: not a terminal, so nothing can be confirmed; pass --yes to apply without a prompt")
    fleet = _load_fleet(args)
    if fleet is None:
        return EXIT_BAD_INPUT
    # Each applied change is one JSON line on stderr (the audit trail), the plan on stdout.
    configure_logging("info", stream=sys.stderr)

    def confirm(result: PlanResult) -> bool:
        render_plan(result)
        answer = input("\nApply these changes? Only 'yes' applies: ")
        return answer.strip() == "yes"

    def waiting(holder: str) -> None:
        print(f"waiting for the fleet lock, held by {holder} …", file=sys.stderr, flush=True)

    async with database(args) as (config, connection):
        try:
            outcome = await apply(
                connection,
                fleet,
                box=SecretBox(config.security.token_keys),
                now=now(),
                prune=args.prune,
                operator=operator_name(),
                wait_seconds=args.wait,
                confirm=None if args.yes else confirm,
                on_wait=waiting,
            )
        except ApplyLocked as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        except ApplyRefused as exc:
            refused = PlanResult(exc.changes, args.prune)
            if args.json:
                print(json.dumps({**refused.as_dict(), "applied": False}, indent=2, default=str))
            else:
                render_plan(refused)
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    result = outcome.plan
    if args.json:
        print(json.dumps({**result.as_dict(), "applied": outcome.applied}, indent=2, default=str))
        return EXIT_OK
    if not result.changes:
        print("No changes: the database already matches the fleet file; nothing was applied.")
    elif not outcome.applied:
        print("Not applied (not confirmed); nothing was written.")
    else:
        if args.yes:
            render_plan(result)
        counts = result.counts()
        print(
            f"\nApplied: {counts['create']} created, {counts['change']} changed, {counts['archive']} archived, in "
            "one transaction; running daemons were notified."
        )
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    text = asyncio.run(_export(args))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"fleet written to {args.output}; `recomamp plan {args.output}` shows no change", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


async def _export(args: argparse.Namespace) -> str:
    from recomamp.services.fleet import export

    async with database(args) as (_, connection):
        return await export(connection, user=args.user)


def cmd_example_fleet(args: argparse.Namespace) -> int:
    from importlib.resources import files

    sys.stdout.write(files("recomamp").joinpath("example-fleet.toml").read_text(encoding="utf-8"))
    return EXIT_OK


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    plan = add_command(
        commands,
        "plan",
        "show what `apply` would change to make the database match a fleet file (or a directory of them)",
        cmd_plan,
        common,
    )
    plan.add_argument("file", metavar="FILE", help="a fleet TOML file, or a directory of them")
    plan.add_argument("--prune", action="store_true", help="also show the schedules apply --prune would archive")
    plan.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 1 when there are changes (0: none, 2: an invalid file), for a CI drift check",
    )
    apply = add_command(
        commands, "apply", "make the database match a fleet file, in one transaction", cmd_apply, common
    )
    apply.add_argument("file", metavar="FILE", help="a fleet TOML file, or a directory of them")
    apply.add_argument(
        "--prune", action="store_true", help="archive the file's users' schedules it does not name (runs are kept)"
    )
    apply.add_argument("--yes", action="store_true", help="apply without asking")
    apply.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="when another apply runs, wait this long for it (default: refuse at once, naming it)",
    )
    export = add_command(
        commands, "export", "write the stored fleet as a fleet file (secrets as their references)", cmd_export, common
    )
    export.add_argument("--user", metavar="EMAIL", help="only this user's part of the fleet")
    export.add_argument("--output", metavar="PATH", help="write to this file (default: stdout)")
    add_command(
        commands,
        "example-fleet",
        "print the example fleet file, two users and every kind of schedule (recomamp example-fleet > fleet.toml)",
        cmd_example_fleet,
        common,
    )
