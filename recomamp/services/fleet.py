"""Schedules as code: read a fleet file, plan it against the database, apply it in one transaction, export it.

`plan` is `apply` rolled back: the same writes, through the same services (`schedules create/update`, users,
instances, Snowflake configurations), so a refusal the plan shows (a grid-moving edit without key columns, a
lookback that overlaps its own windows) is exactly the one apply would meet, and nothing is ever half applied.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from recomamp.crypto import SecretBox
from recomamp.domain.fleet import (
    SECRET_KEYS,
    UPDATE_FIELD,
    Change,
    DesiredSnowflake,
    Document,
    Fleet,
    FleetInvalid,
    Problem,
    Stored,
    StoredSchedule,
    StoredSnowflake,
    create_model,
    diff,
    schedule_fields,
    validate,
)
from recomamp.domain.models import ScheduleUpdate
from recomamp.services import schedules as schedule_service
from recomamp.store import catalog
from recomamp.store import fleet as fleet_store
from recomamp.store import schedules as schedule_store
from recomamp.store.db import Connection
from recomamp.store.snowflake_configs import SnowflakeConfigInput, save_config

log = structlog.get_logger(__name__)

ARCHIVE_REASON = "archived: removed from the fleet file (recomamp apply --prune)"


class ApplyLocked(Exception):
    """Another apply holds the fleet lock: who, and since when."""


class ApplyRefused(ValueError):
    """Some change cannot be made (see each change's `refused`); the transaction was rolled back."""

    def __init__(self, changes: list[Change]) -> None:
        self.changes = changes
        refused = [c for c in changes if c.refused]
        super().__init__(f"{len(refused)} change(s) refused; nothing was applied")


# --- reading the files ---------------------------------------------------------------------------------


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load(path: Path, *, credentials_directory: str | None = None) -> Fleet:
    """The fleet in `path` (a TOML file, or a directory of them), validated, with its secrets read. Raises
    FleetInvalid with every problem found; nothing is read from the database before this returns."""
    if not path.exists():
        raise FleetInvalid([Problem(str(path), "", "does not exist; give a fleet file or a directory of them")])
    files = sorted(p for p in path.rglob("*.toml") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise FleetInvalid([Problem(str(path), "", "holds no *.toml file")])
    root = (path if path.is_dir() else path.parent).resolve()
    documents: list[Document] = []
    for file in files:
        try:
            documents.append(Document(_display(file), tomllib.loads(file.read_text(encoding="utf-8"))))
        except tomllib.TOMLDecodeError as exc:
            documents.append(Document(_display(file), None, str(exc)))
        except (OSError, UnicodeDecodeError) as exc:
            documents.append(Document(_display(file), None, f"cannot be read: {exc}"))

    def read_sql(relative: str) -> str | Problem:
        target = (root / relative).resolve()
        if not target.is_relative_to(root):
            return Problem("", "", f"{relative!r} is outside the fleet directory {root}; keep SQL files inside it")
        try:
            text = target.read_text(encoding="utf-8")
        except FileNotFoundError:
            return Problem("", "", f"{relative!r} does not exist (looked for {target})")
        except IsADirectoryError:
            return Problem("", "", f"{relative!r} is a directory, not a SQL file")
        except (OSError, UnicodeDecodeError) as exc:
            return Problem("", "", f"{relative!r} cannot be read: {exc}")
        if not text.strip():
            return Problem("", "", f"{relative!r} is empty; a schedule needs a query")
        return text

    fleet = validate(documents, read_sql)
    secrets, problems = _read_secrets(fleet.snowflake, credentials_directory or os.environ.get("CREDENTIALS_DIRECTORY"))
    if problems:
        raise FleetInvalid(problems)
    return Fleet(fleet.users, fleet.instances, fleet.snowflake, fleet.schedules, secrets)


def _read_secrets(
    targets: list[DesiredSnowflake], credentials_directory: str | None
) -> tuple[dict[tuple[str, str], str], list[Problem]]:
    from recomamp.snowflake.connection import BadPrivateKey, private_key_der

    secrets: dict[tuple[str, str], str] = {}
    problems: list[Problem] = []
    for target in targets:
        for key, reference in target.references.items():
            where = f"{target.where.path}.{key}"
            if "file" in reference:
                source = Path(reference["file"])
                fix = "create it (readable by this user), or point file at the right path"
            elif credentials_directory:
                source = Path(credentials_directory) / reference["credential"]
                fix = f"add LoadCredential={reference['credential']}:/path to the unit"
            else:
                problems.append(
                    Problem(
                        target.where.file,
                        where,
                        f"the systemd credential {reference['credential']!r} needs $CREDENTIALS_DIRECTORY (run "
                        'under systemd with LoadCredential=), or use { file = "/abs/path" }',
                    )
                )
                continue
            try:
                value = source.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                problems.append(Problem(target.where.file, where, f"{source} does not exist; {fix}"))
                continue
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(Problem(target.where.file, where, f"{source} cannot be read ({exc}); {fix}"))
                continue
            if not value:
                problems.append(Problem(target.where.file, where, f"{source} is empty"))
                continue
            secrets[(target.user.lower(), key)] = value
        pem = secrets.get((target.user.lower(), "private_key"))
        if pem is not None:
            try:
                private_key_der(pem, secrets.get((target.user.lower(), "private_key_passphrase")))
            except BadPrivateKey as exc:
                problems.append(Problem(target.where.file, f"{target.where.path}.private_key", str(exc)))
    return secrets, problems


# --- what is stored ------------------------------------------------------------------------------------

_SNOWFLAKE_COLUMNS = {
    "account": "account",
    "user": "username",
    "database": "database_name",
    "schema": "default_schema",
    "warehouse": "warehouse",
    "role": "role",
    "host": "host",
    "port": "port",
    "protocol": "protocol",
}
_SECRET_COLUMNS = {
    "password": "password_encrypted",
    "private_key": "private_key_encrypted",
    "private_key_passphrase": "private_key_passphrase_encrypted",
}


async def snapshot(connection: Connection, box: SecretBox | None) -> Stored:
    """Everything the fleet covers, read in one go. With `box`, the Snowflake secrets decrypted (in memory
    only), so that a rotated secret behind an unchanged reference shows in the plan."""
    users = {row["email"].lower(): row for row in await fleet_store.users(connection)}
    instance_rows = await fleet_store.instances(connection)
    for key, user in users.items():
        if user["region"] is None:
            # Made by `users add`, before fleets: their region is their instances' (the most common one), as
            # the consent page takes it, so that an export of them plans no change.
            regions = [row["region"] for row in instance_rows if row["email"].lower() == key]
            user["region"] = max(sorted(set(regions)), key=regions.count) if regions else None
    instances = {
        (row["email"].lower(), row["instance_id"]): {
            "advertiser_id": row["advertiser_id"],
            "marketplace_id": row["marketplace_id"],
            "region": row["region"],
            "name": row["name"],
        }
        for row in instance_rows
    }
    snowflake: dict[str, StoredSnowflake] = {}
    for row in await fleet_store.snowflake_configs(connection):
        secrets = {}
        if box is not None:
            secrets = {key: box.decrypt(row[column]) for key, column in _SECRET_COLUMNS.items() if row[column]}
        snowflake[row["email"].lower()] = StoredSnowflake(
            {key: row[column] for key, column in _SNOWFLAKE_COLUMNS.items()}, row["secret_references"], secrets
        )
    schedules: dict[tuple[str, str], list[StoredSchedule]] = {}
    for row in await fleet_store.live_schedules(connection):
        schedules.setdefault((row["user_email"].lower(), row["name"]), []).append(
            StoredSchedule(row["id"], schedule_fields(row), row["paused_reason"])
        )
    return Stored(users, instances, snowflake, schedules)


# --- making the changes ----------------------------------------------------------------------------------


async def _make(connection: Connection, fleet: Fleet, change: Change, box: SecretBox, now: datetime) -> None:
    new = {f.key: f.new for f in change.fields}
    if change.kind == "user":
        user_id = (
            await catalog.add_user(connection, change.user)
            if change.op == "+"
            else await catalog.user_id_for(connection, change.user)
        )
        await fleet_store.set_user_region(connection, user_id, new["region"])
        return
    user_id = await catalog.user_id_for(connection, change.user)
    if change.kind == "snowflake":
        target = next(t for t in fleet.snowflake if t.user.lower() == change.user.lower())
        secrets = {key: fleet.secrets.get((change.user.lower(), key)) for key in SECRET_KEYS}
        f = target.fields
        await save_config(
            connection,
            user_id,
            SnowflakeConfigInput(
                account=f["account"],
                username=f["user"],
                database=f["database"],
                default_schema=f["schema"],
                warehouse=f["warehouse"],
                role=f["role"],
                password=secrets["password"],
                private_key_pem=secrets["private_key"],
                private_key_passphrase=secrets["private_key_passphrase"],
                host=f["host"],
                port=f["port"],
                protocol=f["protocol"],
            ),
            encrypt=box.encrypt,
        )
        await fleet_store.set_secret_references(connection, user_id, target.references)
        return
    if change.kind == "instance":
        instance = next(
            i for i in fleet.instances if i.user.lower() == change.user.lower() and i.instance_id == change.name
        )
        if change.op == "+":
            await catalog.add_instance(connection, user_id, instance_id=instance.instance_id, **instance.fields)
        else:
            await fleet_store.update_instance(connection, user_id, instance.instance_id, **instance.fields)
        return
    if change.op == "-":
        assert change.schedule_id is not None
        await schedule_store.archive_schedule(connection, change.schedule_id, ARCHIVE_REASON)
        return
    desired = next(s for s in fleet.schedules if s.user.lower() == change.user.lower() and s.name == change.name)
    if change.op == "+":
        change.schedule_id = await schedule_service.create(connection, create_model(desired), now)
        if desired.fields["paused"]:
            await schedule_service.set_active(connection, change.schedule_id, False, now)
        return
    assert change.schedule_id is not None
    edits = {UPDATE_FIELD[key]: value for key, value in new.items() if key in UPDATE_FIELD}
    if "snowflake_table_name" in edits:
        # `schedules update` turns Snowflake on with a new table unless told otherwise: tell it what the file says.
        edits["snowflake_enabled"] = desired.fields["snowflake.enabled"]
    if edits:
        await schedule_service.update(connection, change.schedule_id, ScheduleUpdate(**edits), now)
    if "paused" in new:
        await schedule_service.set_active(connection, change.schedule_id, not new["paused"], now)


async def _make_all(connection: Connection, fleet: Fleet, changes: list[Change], box: SecretBox, now: datetime) -> None:
    """Every change, or a `refused` on each one that cannot be made. The common case, nothing refused, runs
    under one savepoint; after a refusal it is rolled back and run again with a savepoint per change, so that
    one refusal does not hide the next and the plan lists them all."""
    if not any(change.refused for change in changes):
        try:
            async with connection.transaction():
                for change in changes:
                    await _make(connection, fleet, change, box, now)
            return
        except (ValueError, LookupError):
            pass  # rolled back to the savepoint: find every refusal, one savepoint each
    for change in changes:
        if change.refused:
            continue
        try:
            async with connection.transaction():
                await _make(connection, fleet, change, box, now)
        except (ValueError, LookupError) as exc:  # ScheduleRefused, a bad combination, a unique key
            change.refused = str(exc)


@dataclass(frozen=True)
class PlanResult:
    changes: list[Change]
    prune: bool

    @property
    def refused(self) -> list[Change]:
        return [c for c in self.changes if c.refused]

    def counts(self) -> dict[str, int]:
        return {
            "create": sum(1 for c in self.changes if c.op == "+"),
            "change": sum(1 for c in self.changes if c.op == "~"),
            "archive": sum(1 for c in self.changes if c.op == "-"),
            "refused": len(self.refused),
        }

    def as_dict(self) -> dict[str, Any]:
        return {"changes": [c.as_dict() for c in self.changes], "summary": self.counts(), "prune": self.prune}


async def plan(connection: Connection, fleet: Fleet, *, box: SecretBox, now: datetime, prune: bool) -> PlanResult:
    """What apply would do, tried inside a transaction that is always rolled back."""
    transaction = connection.transaction()
    await transaction.start()
    try:
        stored = await snapshot(connection, box)
        changes = diff(fleet, stored, prune=prune)
        await _make_all(connection, fleet, changes, box, now)
    finally:
        await transaction.rollback()
    for change in changes:
        if change.op == "+" and change.kind == "schedule":
            change.schedule_id = None  # an id of the rolled-back transaction means nothing
    return PlanResult(changes, prune)


def operator_name() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class ApplyResult:
    plan: PlanResult
    applied: bool  # False: nothing to do, or the person declined


async def apply(
    connection: Connection,
    fleet: Fleet,
    *,
    box: SecretBox,
    now: datetime,
    prune: bool,
    operator: str,
    wait_seconds: float = 0.0,
    confirm: Callable[[PlanResult], bool] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> ApplyResult:
    """The plan, then all of it in one transaction, or none of it. One apply at a time (the fleet lock): a
    second one waits up to `wait_seconds` for it, then is refused with the holder named."""
    await fleet_store.name_session(connection, f"recomamp apply by {operator} pid {os.getpid()}")
    transaction = connection.transaction()
    await transaction.start()
    committed = False
    try:
        await _take_lock(connection, wait_seconds, on_wait)
        stored = await snapshot(connection, box)
        changes = diff(fleet, stored, prune=prune)
        result = PlanResult(changes, prune)
        if not changes:
            return ApplyResult(result, applied=False)
        await _make_all(connection, fleet, changes, box, now)
        if result.refused:
            raise ApplyRefused(changes)
        if confirm is not None and not await asyncio.to_thread(confirm, result):
            return ApplyResult(result, applied=False)
        await schedule_store.notify_wakeup(connection)  # delivered at COMMIT, like an edit's
        await transaction.commit()
        committed = True
    finally:
        if not committed:
            await transaction.rollback()
    for change in changes:
        log.info(
            "fleet_change_applied",
            operator=operator,
            op=change.op,
            kind=change.kind,
            user=change.user,
            name=change.name,
            schedule_id=change.schedule_id,
            fields={f.key: [_logged(f.key, f.old, f.secret), _logged(f.key, f.new, f.secret)] for f in change.fields},
        )
    log.info("fleet_applied", operator=operator, **result.counts())
    return ApplyResult(result, applied=True)


def _logged(key: str, value: Any, secret: bool) -> Any:
    if secret:
        return "(secret)"
    if key == "sql" and isinstance(value, str):
        return f"({len(value)} characters)"
    return value


async def _take_lock(connection: Connection, wait_seconds: float, on_wait: Callable[[str], None] | None) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    told = False
    while not await fleet_store.try_apply_lock(connection):
        holder = await fleet_store.apply_lock_holder(connection)
        who = (
            f"{holder[0]} (backend pid {holder[1]}, since {holder[2]:%Y-%m-%d %H:%M:%S %Z})"
            if holder and holder[2]
            else (holder[0] if holder else "another apply")
        )
        if loop.time() >= deadline:
            raise ApplyLocked(
                f"another apply holds the fleet lock: {who}; nothing was applied. Wait for it to finish, or pass "
                "--wait SECONDS"
            )
        if on_wait is not None and not told:
            on_wait(who)
            told = True
        await asyncio.sleep(0.2)


# --- export --------------------------------------------------------------------------------------------


async def export(connection: Connection, *, user: str | None = None) -> str:
    """The stored fleet as a fleet file that `plan` shows no change for; secrets as the references they were
    applied with (a configuration set by `recomamp snowflake set` has none: a comment says what to add)."""
    stored = await snapshot(connection, None)
    emails = [row["email"] for row in stored.users.values()]
    if user is not None:
        emails = [e for e in emails if e.lower() == user.lower()]
        if not emails:
            await catalog.user_id_for(connection, user)  # the one error for an unknown user
    lines = ["# The recomamp fleet, exported. `recomamp plan` on this file shows no change.", ""]
    for email in emails:
        key = email.lower()
        # A user with neither a region nor an instance (made by `users add` alone) has none to export: the file
        # says na, and its plan records that region once.
        region = stored.users[key]["region"] or "na"
        instances = {iid: fields for (owner, iid), fields in stored.instances.items() if owner == key}
        lines += ["[[users]]", f"email = {_toml(email)}", f"region = {_toml(region)}", ""]
        for instance_id, fields in instances.items():
            lines += ["[[users.instances]]", f"instance_id = {_toml(instance_id)}"]
            lines += [f"{k} = {_toml(v)}" for k, v in fields.items() if v is not None]
            lines.append("")
        target = stored.snowflake.get(key)
        if target is not None:
            lines.append("[users.snowflake]")
            lines += [f"{k} = {_toml(v)}" for k, v in target.fields.items() if v is not None]
            if target.references:
                for secret, reference in target.references.items():
                    inner = ", ".join(f"{k} = {_toml(v)}" for k, v in reference.items())
                    lines.append(f"{secret} = {{ {inner} }}")
            else:
                lines.append(
                    '# stored by `recomamp snowflake set`, with no reference: add password = { file = "/abs/path" } '
                    'or private_key = { file = "/abs/path" }'
                )
            lines.append("")
    for (owner, name), found in stored.schedules.items():
        if owner not in {e.lower() for e in emails}:
            continue
        for schedule in found:
            lines += _schedule_lines(stored.users[owner]["email"], name, schedule.fields)
    return "\n".join(lines).rstrip() + "\n"


_DEFAULTS = {
    "timezone": "UTC",
    "data_lag_days": 14,
    "paused": False,
    "misfire_policy": "coalesce",
    "catch_up_limit": 31,
    "auto_pause_on_failure": False,
    "failure_threshold": 3,
    "allow_overlap": False,
}


def _schedule_lines(email: str, name: str, fields: dict[str, Any]) -> list[str]:
    lines = ["[[schedules]]", f"user = {_toml(email)}", f"name = {_toml(name)}"]
    for key, value in fields.items():
        if key.startswith("snowflake.") or value is None or value == {} or _DEFAULTS.get(key, object()) == value:
            continue
        if key == "preset" and value == "custom":
            continue
        lines.append(f"{key} = {_toml(value)}")
    if fields["snowflake.table"]:
        parts = [f"table = {_toml(fields['snowflake.table'])}"]
        if fields["snowflake.schema"]:
            parts.append(f"schema = {_toml(fields['snowflake.schema'])}")
        if fields["snowflake.key_columns"]:
            parts.append(f"key_columns = {_toml(fields['snowflake.key_columns'])}")
        if not fields["snowflake.enabled"]:
            parts.append("enabled = false")
        lines.append(f"snowflake = {{ {', '.join(parts)} }}")
    lines.append("")
    return lines


def _toml(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"
    text = str(value)
    # A query reads best as it was written: a multi-line literal string, when nothing in it breaks one
    # (TOML trims the newline right after the opening quotes).
    plain = not any(ord(c) < 32 and c not in "\n\t" for c in text) and not text.endswith("'")
    if "\n" in text and "'''" not in text and plain:
        return "'''\n" + text + "'''"
    return json.dumps(text, ensure_ascii=False)
