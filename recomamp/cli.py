"""The `recomamp` command. Exit codes: 0 success, 1 failure, 2 bad input (config, flags, values)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from recomamp.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from recomamp.logs import configure_logging

if TYPE_CHECKING:
    from recomamp.store.db import Connection

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad input from the person at the shell: one line that names the field and what is allowed."""


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _load(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config))


# --- check-config, keygen --------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    path = Path(args.path or args.config)
    try:
        load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{path}: OK")
    return EXIT_OK


def cmd_keygen(_: argparse.Namespace) -> int:
    from recomamp.crypto import generate_key

    # The key goes to stdout only, to be redirected into a file readable by the service alone.
    print(generate_key())
    return EXIT_OK


# --- migrate ----------------------------------------------------------------------------------------


async def _migrate(args: argparse.Namespace) -> int:
    from recomamp.store import migrations
    from recomamp.store.db import connect

    config = _load(args)
    async with connect(config.database) as connection:
        if args.migrate_command == "up":
            applied = await migrations.migrate_up(connection, to=args.to)
            print(f"applied {len(applied)} migration(s)" + (f": {applied}" if applied else ""))
        elif args.migrate_command == "down":
            if args.to is None:
                raise UsageError("migrate down: --to N is required (0 rolls back everything)")
            rolled = await migrations.migrate_down(connection, to=args.to)
            print(f"rolled back {len(rolled)} migration(s)" + (f": {rolled}" if rolled else ""))
        else:
            states = await migrations.status(connection)
            if args.json:
                _print_json([state.__dict__ for state in states])
            else:
                for state in states:
                    mark = "CHANGED" if state.changed else ("applied" if state.applied_at else "pending")
                    when = state.applied_at.isoformat() if state.applied_at else ""
                    print(f"{state.version:04d}  {state.name:<40} {mark:<8} {when}")
            if any(state.changed for state in states):
                return EXIT_FAILURE
    return EXIT_OK


def _async(handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return asyncio.run(handler(args))

    return run


# --- helpers for commands that touch the database ------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


@asynccontextmanager
async def _database(args: argparse.Namespace) -> AsyncIterator[tuple[Config, Connection]]:
    from recomamp.store.db import connect

    config = _load(args)
    async with connect(config.database) as connection:
        yield config, connection


def _read_secret(path: str | None, what: str) -> str:
    """A secret from a file, or from stdin when the path is '-' or missing. Never from an argument."""
    if path and path != "-":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{what}: cannot read {path}: {exc.strerror}") from None
    else:
        if sys.stdin.isatty():
            print(f"paste the {what}, then press Ctrl-D:", file=sys.stderr)
        text = sys.stdin.read()
    text = text.strip()
    if not text:
        raise UsageError(f"{what}: it is empty")
    return text


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(_cell(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_cell(row.get(c)).ljust(widths[c]) for c in columns))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = str(value)
    return text if len(text) <= 70 else text[:67] + "..."


def _validation_line(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if not field or message.split(":")[0].strip() in field.split(".") or message.startswith(field):
        return message
    return f"{field}: {message}"


# --- users, instances ------------------------------------------------------------------------------


async def _users(args: argparse.Namespace) -> int:
    from recomamp.crypto import SecretBox
    from recomamp.store import catalog
    from recomamp.store.users import LIST_USERS
    from recomamp.tokens import set_refresh_token

    async with _database(args) as (config, connection):
        if args.users_command == "add":
            user_id = await catalog.add_user(connection, args.email)
            print(f"user {args.email} added (id {user_id}); store their refresh token with `recomamp users set-token`")
        elif args.users_command == "set-token":
            user_id = await catalog.user_id_for(connection, args.email)
            token = _read_secret(args.token_file, "refresh token")
            await set_refresh_token(connection, SecretBox(config.security.token_keys), user_id, token)
            print(f"refresh token stored for {args.email}; the re-authentication mark, if any, is cleared")
        else:
            rows = [dict(r) for r in await connection.fetch(LIST_USERS)]
            if args.json:
                _print_json(rows)
            else:
                _table(
                    rows,
                    [
                        "id",
                        "email",
                        "needs_reauth",
                        "has_refresh_token",
                        "instances",
                        "schedules",
                        "needs_reauth_reason",
                    ],
                )
    return EXIT_OK


async def _instances(args: argparse.Namespace) -> int:
    from recomamp.store import catalog

    async with _database(args) as (_, connection):
        if args.instances_command == "add":
            user_id = await catalog.user_id_for(connection, args.email)
            await catalog.add_instance(
                connection,
                user_id,
                instance_id=args.instance_id,
                advertiser_id=args.advertiser_id,
                marketplace_id=args.marketplace_id,
                region=args.region,
                name=args.name,
            )
            print(f"instance {args.instance_id} added for {args.email}")
        else:
            rows = [
                dict(r)
                for r in await connection.fetch(
                    "SELECT i.id, u.email AS user_email, i.instance_id, i.advertiser_id, i.marketplace_id, i.region, "
                    "i.name FROM amc_instances i JOIN users u ON u.id = i.owner_id ORDER BY i.id"
                )
            ]
            if args.json:
                _print_json(rows)
            else:
                _table(rows, ["id", "user_email", "instance_id", "advertiser_id", "marketplace_id", "region", "name"])
    return EXIT_OK


# --- snowflake ---------------------------------------------------------------------------------------


async def _snowflake(args: argparse.Namespace) -> int:
    from recomamp.crypto import SecretBox
    from recomamp.domain.identifiers import validate_identifier
    from recomamp.snowflake.connection import BadPrivateKey, private_key_der, server_version
    from recomamp.store import catalog
    from recomamp.store.snowflake_configs import SnowflakeConfigInput, fetch_row, masked, save_config, spec_from_row

    async with _database(args) as (config, connection):
        user_id = await catalog.user_id_for(connection, args.email)
        box = SecretBox(config.security.token_keys)
        if args.snowflake_command == "set":
            validate_identifier(args.database, "database")
            validate_identifier(args.schema, "schema")
            if (args.password_file is None) == (args.private_key_file is None):
                raise UsageError("auth: give exactly one of --password-file and --private-key-file")
            password = _read_secret(args.password_file, "password") if args.password_file else None
            pem = _read_secret(args.private_key_file, "private key") if args.private_key_file else None
            passphrase = _read_secret(args.passphrase_file, "passphrase") if args.passphrase_file else None
            if pem is not None:
                try:
                    private_key_der(pem, passphrase)
                except BadPrivateKey as exc:
                    raise UsageError(f"private key: {exc}") from None
            await save_config(
                connection,
                box,
                user_id,
                SnowflakeConfigInput(
                    account=args.account,
                    username=args.user,
                    database=args.database,
                    default_schema=args.schema,
                    warehouse=args.warehouse,
                    role=args.role,
                    password=password,
                    private_key_pem=pem,
                    private_key_passphrase=passphrase,
                    host=args.host,
                    port=args.port,
                    protocol=args.protocol,
                ),
            )
            print(
                f"Snowflake configuration saved for {args.email}; check it with `recomamp snowflake test {args.email}`"
            )
            return EXIT_OK
        row = await fetch_row(connection, user_id)
        if row is None:
            raise UsageError(
                f"snowflake: {args.email} has no Snowflake configuration; add one with `recomamp snowflake set`"
            )
        if args.snowflake_command == "show":
            shown = masked(row)
            if args.json:
                _print_json(shown)
            else:
                for key, value in shown.items():
                    print(f"{key:>24}: {_cell(value)}")
            return EXIT_OK
        spec = spec_from_row(row, box)
    try:
        version = await asyncio.to_thread(server_version, spec, config.snowflake)
    except Exception as exc:  # report any connector failure as one line, classified
        from recomamp.snowflake.errors import classify

        print(f"snowflake test failed: {classify(exc).message}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"connected to Snowflake as {spec.user} ({spec.auth_method}); server version {version}")
    return EXIT_OK


# --- schedules ---------------------------------------------------------------------------------------


def _schedule_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.sql is not None or getattr(args, "sql_file", None):
        if args.sql is not None and args.sql_file:
            raise UsageError("sql_query: give --sql or --sql-file, not both")
        fields["sql_query"] = Path(args.sql_file).read_text() if args.sql_file else args.sql
    if args.workflow_id is not None:
        fields["workflow_id"] = args.workflow_id
    if args.param:
        parameters: dict[str, str] = {}
        for item in args.param:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"parameter_values: {item!r} is not KEY=VALUE")
            parameters[key.strip()] = value
        fields["parameter_values"] = parameters
    for flag, field_name in (
        ("name", "name"),
        ("time", "time_of_day"),
        ("day_of_week", "day_of_week"),
        ("day_of_month", "day_of_month"),
        ("cron", "cron_expression"),
        ("timezone", "timezone"),
        ("lookback_days", "lookback_days"),
        ("data_lag_days", "data_lag_days"),
        ("failure_threshold", "failure_threshold"),
        ("snowflake_table", "snowflake_table_name"),
        ("snowflake_schema", "snowflake_schema_name"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            fields[field_name] = value
    if args.snowflake_key_columns is not None:
        fields["snowflake_key_columns"] = [c.strip() for c in args.snowflake_key_columns.split(",") if c.strip()]
    if args.auto_pause is not None:
        fields["auto_pause_on_failure"] = args.auto_pause
    if args.no_snowflake:
        fields["snowflake_enabled"] = False
    elif getattr(args, "snowflake", False):
        fields["snowflake_enabled"] = True
    return fields


async def _schedules(args: argparse.Namespace) -> int:
    from recomamp.domain.models import ScheduleCreateCustom, ScheduleCreatePreset, ScheduleUpdate
    from recomamp.domain.schedules import fires_after, window_for
    from recomamp.store import catalog
    from recomamp.store.schedules import cadence_from_row

    command = args.schedules_command
    if command == "create":
        fields = _schedule_fields(args)
        fields.update(user_email=args.user, instance_id=args.instance)
        try:
            if args.preset == "custom" or (args.preset is None and args.cron):
                fields.pop("time_of_day", None)
                model: ScheduleCreatePreset | ScheduleCreateCustom = ScheduleCreateCustom(**fields)
            else:
                model = ScheduleCreatePreset(preset=args.preset or "daily", **fields)
        except ValidationError as exc:
            raise UsageError(_validation_line(exc)) from None
    async with _database(args) as (_, connection):
        if command == "create":
            schedule_id = await catalog.create_schedule(connection, model, _now())
            created = await catalog.get_schedule(connection, schedule_id)
            if args.json:
                _print_json(created.model_dump(mode="json"))
            else:
                print(f"schedule {schedule_id} created; next run {_cell(created.next_run_at)}")
            return EXIT_OK
        if command == "list":
            schedules = await catalog.list_schedules(connection, args.user)
            if args.json:
                _print_json([s.model_dump(mode="json") for s in schedules])
            else:
                _table(
                    [s.model_dump() | {"cadence": _cadence_text(s.model_dump())} for s in schedules],
                    [
                        "id",
                        "name",
                        "user_email",
                        "instance_id",
                        "cadence",
                        "is_active",
                        "next_run_at",
                        "snowflake_table_name",
                        "consecutive_failures",
                    ],
                )
            return EXIT_OK
        schedule_id = args.id
        if command == "show":
            schedule = await catalog.get_schedule(connection, schedule_id)
            if args.json:
                _print_json(schedule.model_dump(mode="json"))
            else:
                for key, value in schedule.model_dump().items():
                    print(f"{key:>24}: {_cell(value)}")
        elif command == "update":
            try:
                update = ScheduleUpdate(**_schedule_fields(args))
            except ValidationError as exc:
                raise UsageError(_validation_line(exc)) from None
            await catalog.update_schedule(connection, schedule_id, update, _now())
            print(
                f"schedule {schedule_id} updated; "
                f"next run {_cell((await catalog.get_schedule(connection, schedule_id)).next_run_at)}"
            )
        elif command in ("pause", "resume"):
            await catalog.set_active(connection, schedule_id, command == "resume", _now())
            print(f"schedule {schedule_id} {'resumed' if command == 'resume' else 'paused'}")
        elif command == "delete":
            await catalog.delete_schedule(connection, schedule_id)
            print(f"schedule {schedule_id} deleted, with its run history")
        elif command == "run-now":
            run_id = await catalog.run_now(connection, schedule_id, _now())
            print(
                f"run {run_id} queued; a running daemon picks it up at once "
                f"(follow it with `recomamp runs show {run_id}`)"
            )
        elif command == "preview":
            row = await connection.fetchrow("SELECT * FROM workflow_schedules WHERE id = $1", schedule_id)
            if row is None:
                raise UsageError(f"schedule: no schedule {schedule_id}; see `recomamp schedules list`")
            cadence = cadence_from_row(row)
            fires = []
            for fire in fires_after(cadence, _now()):
                window = window_for(cadence, fire)
                fires.append(
                    {
                        "fire_at": fire,
                        "fire_at_local": fire.astimezone(cadence.tz).strftime("%Y-%m-%d %H:%M %Z"),
                        "window_start": window.start_local.isoformat(),
                        "window_end": window.end_local.isoformat(),
                        "timezone": window.timezone,
                    }
                )
                if len(fires) >= args.count:
                    break
            if args.json:
                _print_json(fires)
            else:
                _table(fires, ["fire_at_local", "fire_at", "window_start", "window_end", "timezone"])
    return EXIT_OK


def _cadence_text(schedule: dict[str, Any]) -> str:
    preset = schedule["preset"]
    at = schedule["time_of_day"].strftime("%H:%M") if schedule.get("time_of_day") else ""
    zone_name = schedule["timezone"]
    if preset == "daily":
        return f"daily {at} {zone_name}"
    if preset == "weekly":
        from recomamp.domain.schedules import WEEKDAYS

        return f"weekly {WEEKDAYS[schedule['day_of_week']][:3]} {at} {zone_name}"
    if preset == "monthly":
        return f"monthly day {schedule['day_of_month']} {at} {zone_name}"
    return f"cron '{schedule['cron_expression']}' {zone_name}"


# --- runs --------------------------------------------------------------------------------------------

RUN_COLUMNS = (
    "r.id, r.schedule_id, s.name AS schedule_name, u.email AS user_email, r.scheduled_for, r.trigger, r.status, "
    "r.step, r.attempt, r.missed_fires_skipped, r.window_start, r.window_end, r.window_timezone, "
    "r.amc_execution_id, r.amc_status, r.amc_status_reason, r.result_files, r.result_rows, r.snowflake_status, "
    "r.snowflake_table, r.snowflake_rows, r.snowflake_error, r.error_kind, r.error_message, r.lease_owner, "
    "r.lease_expires_at, r.created_at, r.started_at, r.submitted_at, r.amc_finished_at, r.downloaded_at, "
    "r.snowflake_finished_at, r.finished_at"
)
RUN_FROM = " FROM schedule_runs r JOIN workflow_schedules s ON s.id = r.schedule_id JOIN users u ON u.id = s.owner_id"


async def _runs(args: argparse.Namespace) -> int:
    from recomamp.daemon.pipeline import RetryUploadRefused, retry_upload
    from recomamp.daemon.services import open_services
    from recomamp.snowflake.errors import SnowflakeLoadError
    from recomamp.store.db import create_pool

    if args.runs_command == "retry-upload":
        config = _load(args)
        configure_logging(config.logging.level)
        pool = await create_pool(config.database)
        try:
            async with open_services(config, pool) as services:
                try:
                    print(await retry_upload(services, config, args.id))
                except RetryUploadRefused as exc:
                    raise UsageError(str(exc)) from None
                except SnowflakeLoadError as exc:
                    print(f"retry-upload failed: {exc}", file=sys.stderr)
                    return EXIT_FAILURE
        finally:
            await pool.close()
        return EXIT_OK
    async with _database(args) as (_, connection):
        if args.runs_command == "show":
            row = await connection.fetchrow(f"SELECT {RUN_COLUMNS}{RUN_FROM} WHERE r.id = $1", args.id)
            if row is None:
                raise UsageError(f"run: no run {args.id}; see `recomamp runs list`")
            if args.json:
                _print_json(dict(row))
            else:
                for key, value in dict(row).items():
                    print(f"{key:>22}: {value if key.endswith(('message', 'error')) and value else _cell(value)}")
            return EXIT_OK
        conditions, values = [], []
        if args.schedule is not None:
            values.append(args.schedule)
            conditions.append(f"r.schedule_id = ${len(values)}")
        if args.status is not None:
            values.append(args.status)
            conditions.append(f"r.status = ${len(values)}")
        values.append(args.limit)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = [
            dict(r)
            for r in await connection.fetch(
                f"SELECT {RUN_COLUMNS}{RUN_FROM}{where} ORDER BY r.id DESC LIMIT ${len(values)}", *values
            )
        ]
        if args.json:
            _print_json(rows)
        else:
            _table(
                rows,
                [
                    "id",
                    "schedule_id",
                    "user_email",
                    "scheduled_for",
                    "status",
                    "step",
                    "attempt",
                    "snowflake_status",
                    "snowflake_rows",
                    "error_message",
                ],
            )
    return EXIT_OK


# --- run, sandbox, demo, keys -------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from recomamp.daemon.process import Daemon, DaemonError

    config = _load(args)
    configure_logging(config.logging.level)
    try:
        return asyncio.run(Daemon(config, config_path=Path(args.config), once=args.once).run())
    except DaemonError as exc:
        from recomamp.logs import get_logger

        get_logger("recomamp").error("daemon_cannot_start", reason=str(exc))
        print(f"recomamp: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_sandbox(args: argparse.Namespace) -> int:
    from recomamp.sandbox.simulator import AmcSimulator, InstanceProfile

    async def serve() -> None:
        simulator = AmcSimulator(
            default_profile=InstanceProfile(
                rows=args.rows, files=args.files, pending_seconds=args.pending, running_seconds=args.running
            )
        )
        url = await simulator.start(args.host, args.port)
        print(f"AMC/LWA simulator on {url}")
        print(f"  token_url     = {simulator.token_url}")
        print(f"  amc_base_url  = {url} (every region)")
        print(f"  client_id     = {simulator.client_id}")
        print(f"  client_secret = {simulator.client_secret}")
        print(f'  add a user:     curl -s -XPOST {url}/_sandbox/users -d \'{{"email": "ada@example.com"}}\'')
        print("Ctrl-C stops it.", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await simulator.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from recomamp.sandbox.demo import run_demo

    code: int = run_demo(Path(args.workdir))
    return code


async def _keys(args: argparse.Namespace) -> int:
    from recomamp.crypto import SecretBox

    columns = {
        "users": ("refresh_token_encrypted", "access_token_encrypted"),
        "snowflake_configurations": (
            "password_encrypted",
            "private_key_encrypted",
            "private_key_passphrase_encrypted",
        ),
    }
    async with _database(args) as (config, connection):
        box = SecretBox(config.security.token_keys)
        rotated = 0
        async with connection.transaction():
            for table, names in columns.items():
                for row in await connection.fetch(f"SELECT id, {', '.join(names)} FROM {table} FOR UPDATE"):
                    for name in names:
                        if row[name]:
                            await connection.execute(
                                f"UPDATE {table} SET {name} = $2 WHERE id = $1", row["id"], box.rotate(row[name])
                            )
                            rotated += 1
        print(f"re-encrypted {rotated} secret(s) with the first key; older keys may now be removed")
    return EXIT_OK


# --- the parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's parser must not overwrite a --config given before the subcommand.
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=f"the TOML config file (default {DEFAULT_CONFIG_PATH})",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output, for scripts"
    )

    parser = argparse.ArgumentParser(
        prog="recomamp",
        description="Runs Amazon Marketing Cloud workflows on schedules and loads the results into Snowflake.",
        parents=[common],
    )
    parser.set_defaults(config=str(DEFAULT_CONFIG_PATH), json=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check-config", parents=[common], help="validate a config file; exit 2 on problems")
    check.add_argument("path", nargs="?", help="the file to check (default: --config)")
    check.set_defaults(handler=cmd_check_config)

    keygen = commands.add_parser("keygen", parents=[common], help="print a new token encryption key")
    keygen.set_defaults(handler=cmd_keygen)

    migrate = commands.add_parser("migrate", parents=[common], help="apply or roll back the database schema")
    migrate_commands = migrate.add_subparsers(dest="migrate_command", required=True, metavar="ACTION")
    for action, text in (("up", "apply pending migrations"), ("down", "roll back"), ("status", "list migrations")):
        sub = migrate_commands.add_parser(action, parents=[common], help=text)
        if action != "status":
            sub.add_argument("--to", type=int, metavar="N", help="stop at version N")
        sub.set_defaults(handler=_async(_migrate))

    def add(group: Any, name: str, text: str, handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=text, description=text)
        sub.set_defaults(handler=handler)
        return sub

    run = add(commands, "run", "run the daemon (systemd starts this)", cmd_run)
    run.add_argument(
        "--once", action="store_true", help="run what is due now to the end, then exit: 0 if all succeeded"
    )

    users = commands.add_parser("users", parents=[common], help="users and their Amazon tokens")
    users_commands = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    add(users_commands, "add", "add a user", _async(_users)).add_argument("email")
    set_token = add(
        users_commands,
        "set-token",
        "store a user's LWA refresh token (read from stdin or --token-file)",
        _async(_users),
    )
    set_token.add_argument("email")
    set_token.add_argument("--token-file", metavar="PATH", help="a file holding the refresh token (default: stdin)")
    add(users_commands, "list", "list users, with who needs to re-authenticate", _async(_users))

    instances = commands.add_parser("instances", parents=[common], help="AMC instances")
    instances_commands = instances.add_subparsers(dest="instances_command", required=True, metavar="ACTION")
    add_instance = add(instances_commands, "add", "add an AMC instance for a user", _async(_instances))
    add_instance.add_argument("email")
    add_instance.add_argument("--instance-id", required=True, help="the AMC instance id, e.g. amcabc123")
    add_instance.add_argument("--advertiser-id", required=True, help="the AMC account (entity) id")
    add_instance.add_argument("--marketplace-id", required=True, help="e.g. ATVPDKIKX0DER")
    add_instance.add_argument("--region", default="na", choices=["na", "eu", "fe"])
    add_instance.add_argument("--name")
    add(instances_commands, "list", "list AMC instances", _async(_instances))

    snowflake = commands.add_parser("snowflake", parents=[common], help="users' Snowflake configurations")
    snowflake_commands = snowflake.add_subparsers(dest="snowflake_command", required=True, metavar="ACTION")
    sf_set = add(snowflake_commands, "set", "set a user's Snowflake configuration", _async(_snowflake))
    sf_set.add_argument("email")
    sf_set.add_argument("--account", required=True)
    sf_set.add_argument("--user", required=True, help="the Snowflake user recomamp loads as")
    sf_set.add_argument("--database", required=True)
    sf_set.add_argument("--schema", default="PUBLIC", help="the default schema (default PUBLIC)")
    sf_set.add_argument("--warehouse")
    sf_set.add_argument("--role")
    sf_set.add_argument("--password-file", metavar="PATH", help="password auth: a file holding it ('-': stdin)")
    sf_set.add_argument("--private-key-file", metavar="PATH", help="key-pair auth: a PEM private key file")
    sf_set.add_argument("--passphrase-file", metavar="PATH", help="the private key's passphrase, if encrypted")
    sf_set.add_argument("--host", help="another host (a proxy, or a local emulator)")
    sf_set.add_argument("--port", type=int)
    sf_set.add_argument("--protocol", choices=["http", "https"])
    add(snowflake_commands, "show", "show a user's configuration, secrets masked", _async(_snowflake)).add_argument(
        "email"
    )
    add(snowflake_commands, "test", "connect, and report the server version", _async(_snowflake)).add_argument("email")

    schedules = commands.add_parser("schedules", parents=[common], help="workflow schedules")
    schedule_commands = schedules.add_subparsers(dest="schedules_command", required=True, metavar="ACTION")

    def schedule_flags(sub: argparse.ArgumentParser, creating: bool) -> None:
        sub.add_argument("--name", required=creating)
        sub.add_argument("--sql", help="ad-hoc AMC SQL")
        sub.add_argument("--sql-file", metavar="PATH", help="ad-hoc AMC SQL from a file")
        sub.add_argument("--workflow-id", help="a saved AMC workflow instead of SQL")
        sub.add_argument("--param", action="append", metavar="KEY=VALUE", help="a saved workflow's parameter; repeat")
        if creating:
            sub.add_argument("--preset", choices=["daily", "weekly", "monthly", "custom"])
        sub.add_argument("--time", metavar="HH:MM", help="time of day, in --timezone")
        sub.add_argument("--day-of-week", metavar="DAY", help="weekly: monday..sunday, or 0..6")
        sub.add_argument("--day-of-month", type=int, metavar="N", help="monthly: 1..31 (29-31: the month's last day)")
        sub.add_argument("--cron", metavar="EXPR", help="custom: a 5-field cron expression, in --timezone")
        sub.add_argument("--timezone", metavar="IANA", help="e.g. America/New_York (default UTC)")
        sub.add_argument("--lookback-days", type=int, metavar="N")
        sub.add_argument("--data-lag-days", type=int, metavar="N", help="end the window N days ago (default 14)")
        sub.add_argument("--auto-pause", action=argparse.BooleanOptionalAction, default=None)
        sub.add_argument("--failure-threshold", type=int, metavar="N")
        sub.add_argument("--snowflake-table", metavar="NAME", help="load results into this table (enables Snowflake)")
        sub.add_argument("--snowflake-schema", metavar="NAME", help="default: the user's default schema")
        sub.add_argument(
            "--snowflake-key-columns", metavar="A,B", help="MERGE on these columns instead of replacing the window"
        )
        sub.add_argument("--no-snowflake", action="store_true", help="do not load into Snowflake")
        if not creating:
            sub.add_argument("--snowflake", action="store_true", help="load into Snowflake again")

    create = add(schedule_commands, "create", "create a schedule", _async(_schedules))
    create.add_argument("--user", required=True, metavar="EMAIL")
    create.add_argument("--instance", required=True, metavar="INSTANCE_ID")
    schedule_flags(create, creating=True)
    add(schedule_commands, "list", "list schedules", _async(_schedules)).add_argument("--user", metavar="EMAIL")
    for action, text in (
        ("show", "show a schedule"),
        ("pause", "pause a schedule"),
        ("resume", "resume a schedule from its next fire"),
        ("delete", "delete a schedule and its runs"),
        ("run-now", "run a schedule now, leaving its cadence alone"),
    ):
        add(schedule_commands, action, text, _async(_schedules)).add_argument("id", type=int)
    update = add(schedule_commands, "update", "change a schedule; only the flags given change", _async(_schedules))
    update.add_argument("id", type=int)
    schedule_flags(update, creating=False)
    preview = add(schedule_commands, "preview", "print the next fire times and their windows", _async(_schedules))
    preview.add_argument("id", type=int)
    preview.add_argument("--count", type=int, default=5)

    runs = commands.add_parser("runs", parents=[common], help="the execution history")
    run_commands = runs.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    run_list = add(run_commands, "list", "list runs, newest first", _async(_runs))
    run_list.add_argument("--schedule", type=int, metavar="ID")
    run_list.add_argument("--status", choices=["pending", "running", "succeeded", "failed", "cancelled"])
    run_list.add_argument("--limit", type=int, default=50)
    add(run_commands, "show", "show one run, with every step's time", _async(_runs)).add_argument("id", type=int)
    add(
        run_commands, "retry-upload", "fetch fresh result links and load them into Snowflake again", _async(_runs)
    ).add_argument("id", type=int)

    sandbox = add(commands, "sandbox", "serve the AMC/LWA simulator on loopback", cmd_sandbox)
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8900)
    sandbox.add_argument("--rows", type=int, default=120, help="rows per result")
    sandbox.add_argument("--files", type=int, default=3, help="files per result")
    sandbox.add_argument("--pending", type=float, default=1.0, help="seconds PENDING")
    sandbox.add_argument("--running", type=float, default=3.0, help="seconds RUNNING")

    demo = add(commands, "demo", "run the whole pipeline on embedded servers and print what happened", cmd_demo)
    demo.add_argument("--workdir", default=".recomamp-demo", help="where the embedded Postgres keeps its data")

    keys = commands.add_parser("keys", parents=[common], help="token encryption keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    add(key_commands, "rotate", "re-encrypt every stored secret with the first key", _async(_keys))

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # An interactive command prints its own answer; library chatter (connector retries) stays out of it.
    # `run` and `runs retry-upload` reconfigure logging from the config file.
    configure_logging("error", stream=sys.stderr)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (UsageError, ValueError, LookupError) as exc:
        # Bad input (a ValueError from validation, a LookupError for an unknown user, instance,
        # schedule or run): one line that names the field and what is allowed. Nothing was written.
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"error: cannot reach the database in [database] dsn ({type(exc).__name__}: {exc})", file=sys.stderr)
        return EXIT_FAILURE
    return code
