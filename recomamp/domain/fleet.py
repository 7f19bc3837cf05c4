"""Schedules as code: the fleet file's model, its validation, and the diff against what is stored. No I/O.

A fleet is one TOML file or a directory of them. Each file may hold `[[users]]` (with their `instances` and
their `snowflake` target) and `[[schedules]]`; the files of a directory are read as one fleet. Everything is
validated before the database is read, and every problem is reported at once, each with its file, its key
path (`schedules[3].timezone`) and what to write instead: a typo must never drop a setting silently, so an
unknown key is an error too.

The natural key of a schedule is (user, name); of an instance (user, instance_id); a user is their email.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recomamp.domain.identifiers import validate_identifier
from recomamp.domain.models import (
    ScheduleCreateCustom,
    ScheduleCreatePreset,
    check_catch_up_limit,
    check_failure_threshold,
    check_lag_and_lookback,
)
from recomamp.domain.schedules import (
    DEFAULT_DATA_LAG_DAYS,
    WEEKDAYS,
    check_cron,
    parse_time_of_day,
    parse_weekday,
    zone,
)

Region = Literal["na", "eu", "fe"]
SECRET_KEYS = ("password", "private_key", "private_key_passphrase")
# A systemd credential name (LoadCredential=NAME:PATH): a file name, no path.
_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,255}$")
INLINE_REFUSAL = (
    'a secret is never written in the fleet file; name where it is: {key} = {{ file = "/etc/recomamp/secrets/…" }} '
    'or {key} = {{ credential = "NAME" }} (a systemd LoadCredential= name)'
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretReference(_Model):
    """Where a secret is read from when the fleet is applied. The value never appears in the file."""

    file: str | None = None
    credential: str | None = None

    @field_validator("file")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not PurePosixPath(value).is_absolute():
            raise ValueError(
                f"{value!r} is relative; give an absolute path outside the repository, e.g. "
                "/etc/recomamp/secrets/snowflake.pw (a secret file never lives beside the fleet file in git)"
            )
        return value

    @field_validator("credential")
    @classmethod
    def _credential(cls, value: str | None) -> str | None:
        if value is not None and not _CREDENTIAL_NAME.match(value):
            raise ValueError(f"{value!r} is not a systemd credential name; use letters, digits, _ . @ and -")
        return value

    @model_validator(mode="after")
    def _one(self) -> SecretReference:
        if (self.file is None) == (self.credential is None):
            raise ValueError('give exactly one of file = "/abs/path" or credential = "NAME"')
        return self

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file} if self.file is not None else {"credential": str(self.credential)}


def _no_inline_secret(value: Any, key: str) -> Any:
    if isinstance(value, str):
        raise ValueError(INLINE_REFUSAL.format(key=key))
    return value


class FleetSnowflake(_Model):
    account: str = Field(min_length=1)
    user: str = Field(min_length=1, description="the Snowflake user recomamp loads as")
    database: str
    schema_: str = Field(default="PUBLIC", alias="schema")
    warehouse: str | None = None
    role: str | None = None
    password: SecretReference | None = None
    private_key: SecretReference | None = None
    private_key_passphrase: SecretReference | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    protocol: Literal["http", "https"] | None = None

    @field_validator("password", mode="before")
    @classmethod
    def _password(cls, value: Any) -> Any:
        return _no_inline_secret(value, "password")

    @field_validator("private_key", mode="before")
    @classmethod
    def _private_key(cls, value: Any) -> Any:
        return _no_inline_secret(value, "private_key")

    @field_validator("private_key_passphrase", mode="before")
    @classmethod
    def _passphrase(cls, value: Any) -> Any:
        return _no_inline_secret(value, "private_key_passphrase")

    @field_validator("database", "schema_")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return validate_identifier(value, "name")

    @model_validator(mode="after")
    def _auth(self) -> FleetSnowflake:
        if (self.password is None) == (self.private_key is None):
            raise ValueError(
                "give exactly one of password = { file = … } (password auth) or private_key = { file = … } "
                "(key-pair auth)"
            )
        if self.private_key_passphrase is not None and self.private_key is None:
            raise ValueError("private_key_passphrase: only a private_key has a passphrase")
        return self

    def references(self) -> dict[str, dict[str, str]]:
        return {key: ref.as_dict() for key in SECRET_KEYS if (ref := getattr(self, key)) is not None}


class FleetInstance(_Model):
    instance_id: str = Field(min_length=1, description="the AMC instance id, e.g. amcabc123")
    advertiser_id: str = Field(min_length=1)
    marketplace_id: str = Field(min_length=1)
    region: Region | None = None  # None: the user's region
    name: str | None = None


class FleetUser(_Model):
    email: str
    region: Region
    instances: list[FleetInstance] = Field(default_factory=list)
    snowflake: FleetSnowflake | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if "@" not in value or value != value.strip() or " " in value:
            raise ValueError(f"{value!r} is not an email address")
        return value


class FleetScheduleSnowflake(_Model):
    table: str
    schema_: str | None = Field(default=None, alias="schema")  # None: the user's default schema
    key_columns: list[str] | None = None
    enabled: bool = True

    @field_validator("table", "schema_")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        return None if value is None else validate_identifier(value, "name")

    @field_validator("key_columns")
    @classmethod
    def _keys(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one column, or leave key_columns out")
        for column in value:
            validate_identifier(column, "key_columns")
        if len({c.upper() for c in value}) != len(value):
            raise ValueError("a key column is named twice")
        return value


class FleetSchedule(_Model):
    user: str
    name: str = Field(min_length=1, max_length=200)
    instance: str = Field(min_length=1, description="an instance_id of this user's instances")
    preset: Literal["daily", "weekly", "monthly", "custom"] | None = None  # None: custom with cron, else daily
    time: str | None = None
    day_of_week: str | int | None = None
    day_of_month: int | None = Field(default=None, ge=1, le=31)
    cron: str | None = None
    timezone: str = "UTC"
    sql: str | None = None
    sql_file: str | None = None
    workflow_id: str | None = None
    parameters: dict[str, str] = Field(default_factory=dict)
    lookback_days: int | None = None
    data_lag_days: int = DEFAULT_DATA_LAG_DAYS
    paused: bool = False
    misfire_policy: Literal["coalesce", "catch_up"] = "coalesce"
    catch_up_limit: int = 31
    auto_pause_on_failure: bool = False
    failure_threshold: int = 3
    allow_overlap: bool = False
    snowflake: FleetScheduleSnowflake | None = None

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        zone(value)
        return value

    @field_validator("time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None:
            parse_time_of_day(value)
        return value

    @field_validator("day_of_week")
    @classmethod
    def _weekday(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_weekday(str(value))
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            check_cron(value)
        return value

    @field_validator("sql_file")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is not None and (PurePosixPath(value).is_absolute() or Path(value).is_absolute()):
            raise ValueError(f"{value!r} is absolute; give a path relative to the fleet file, e.g. sql/daily.sql")
        return value

    @field_validator("lookback_days", "data_lag_days", "failure_threshold", "catch_up_limit")
    @classmethod
    def _bounds(cls, value: int | None, info: Any) -> int | None:
        checks: dict[str, Callable[[int | None], None]] = {
            "lookback_days": lambda v: check_lag_and_lookback(None, v),
            "data_lag_days": lambda v: check_lag_and_lookback(v, None),
            "failure_threshold": check_failure_threshold,
            "catch_up_limit": check_catch_up_limit,
        }
        checks[info.field_name](value)
        return value

    def effective_preset(self) -> str:
        return self.preset or ("custom" if self.cron is not None else "daily")


class FleetDocument(_Model):
    users: list[FleetUser] = Field(default_factory=list)
    schedules: list[FleetSchedule] = Field(default_factory=list)


# --- problems ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    path: str  # schedules[3].timezone
    message: str  # what is wrong and what to write instead

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.message}" if self.path else f"{self.file}: {self.message}"


class FleetInvalid(ValueError):
    """The fleet file(s) have problems: all of them, each with its file, key path and fix. Nothing was written."""

    def __init__(self, problems: list[Problem]) -> None:
        # In the order a person reads a file: its users, then its schedules, each by position.
        self.problems = sorted(
            set(problems), key=lambda p: (p.file, not p.path.startswith("users"), _path_order(p.path), p.message)
        )
        super().__init__(f"{len(self.problems)} problem(s) in the fleet file(s)")


def _path_order(path: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"[\[\].]+", path) if part]


def key_path(loc: Iterable[Any]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = "schema" if part == "schema_" else str(part)
            text += f".{name}" if text else name
    return text


def _allowed(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple((info.alias or name) for name, info in model.model_fields.items())


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel]:
    """The model whose keys are allowed where an unknown key was found."""
    model: type[BaseModel] = FleetDocument
    for part in loc:
        if isinstance(part, int):
            continue
        nested: dict[tuple[type[BaseModel], Any], type[BaseModel]] = {
            (FleetDocument, "users"): FleetUser,
            (FleetDocument, "schedules"): FleetSchedule,
            (FleetUser, "instances"): FleetInstance,
            (FleetUser, "snowflake"): FleetSnowflake,
            (FleetSchedule, "snowflake"): FleetScheduleSnowflake,
            (FleetSnowflake, "password"): SecretReference,
            (FleetSnowflake, "private_key"): SecretReference,
            (FleetSnowflake, "private_key_passphrase"): SecretReference,
        }
        inner = nested.get((model, part))
        if inner is None:
            break
        model = inner
    return model


def _problem_from_error(file: str, error: Any) -> Problem:
    loc = tuple(error["loc"])
    kind = error["type"]
    message = str(error["msg"]).removeprefix("Value error, ")
    # A validator's message may start with the domain's own field name ("timezone: …"): the path says it.
    message = re.sub(r"^[a-z_]+(_expression|_of_day)?: ", "", message) if kind == "value_error" else message
    if kind == "extra_forbidden":
        allowed = _allowed(_model_at(loc[:-1]))
        near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        message = f"unknown key; {hint}allowed here: {', '.join(allowed)}"
    elif kind == "missing":
        message = f"required; add {loc[-1] if loc else 'it'} = …"
    elif kind in ("literal_error", "int_parsing", "bool_parsing", "string_type", "int_type", "bool_type"):
        message = f"{message} (found {error.get('input')!r})"
    elif kind in ("model_type", "dict_type"):
        message = f"{message}; write a table here (found {error.get('input')!r})"
    elif kind == "list_type":
        message = f"{message}; write a list (an array) here (found {error.get('input')!r})"
    return Problem(file, key_path(loc), message)


# --- the fleet, validated and resolved ------------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    file: str
    path: str


@dataclass(frozen=True)
class DesiredUser:
    email: str
    region: str
    where: Where


@dataclass(frozen=True)
class DesiredInstance:
    user: str
    instance_id: str
    fields: dict[str, Any]  # advertiser_id, marketplace_id, region, name
    where: Where


@dataclass(frozen=True)
class DesiredSnowflake:
    user: str
    fields: dict[str, Any]  # account, user, database, schema, warehouse, role, host, port, protocol
    references: dict[str, dict[str, str]]  # password / private_key / private_key_passphrase → {file|credential}
    where: Where


@dataclass(frozen=True)
class DesiredSchedule:
    user: str
    name: str
    fields: dict[str, Any]  # in the file's terms, normalized (see schedule_fields)
    where: Where


@dataclass(frozen=True)
class Fleet:
    users: list[DesiredUser]
    instances: list[DesiredInstance]
    snowflake: list[DesiredSnowflake]
    schedules: list[DesiredSchedule]
    # Secret values read from their references (services.fleet reads them); never printed.
    secrets: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Document:
    """One TOML file as parsed: its name for messages, its data (or the TOML syntax error)."""

    file: str
    data: dict[str, Any] | None
    syntax_error: str | None = None


SqlReader = Callable[[str], "str | Problem"]


def _key(email: str) -> str:
    return email.lower()


def format_time(value: time | None) -> str | None:
    return None if value is None else value.strftime("%H:%M")


def _desired_schedule_fields(schedule: FleetSchedule, sql: str | None) -> dict[str, Any]:
    preset = schedule.effective_preset()
    sf = schedule.snowflake
    return {
        "instance": schedule.instance,
        "preset": preset,
        "time": format_time(parse_time_of_day(schedule.time)) if schedule.time is not None else None,
        "day_of_week": WEEKDAYS[parse_weekday(str(schedule.day_of_week))] if schedule.day_of_week is not None else None,
        "day_of_month": schedule.day_of_month,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "sql": sql,
        "workflow_id": schedule.workflow_id,
        "parameters": dict(schedule.parameters),
        "lookback_days": schedule.lookback_days,
        "data_lag_days": schedule.data_lag_days,
        "paused": schedule.paused,
        "misfire_policy": schedule.misfire_policy,
        "catch_up_limit": schedule.catch_up_limit,
        "auto_pause_on_failure": schedule.auto_pause_on_failure,
        "failure_threshold": schedule.failure_threshold,
        "allow_overlap": schedule.allow_overlap,
        "snowflake.enabled": bool(sf and sf.enabled),
        "snowflake.table": sf.table if sf else None,
        "snowflake.schema": sf.schema_ if sf else None,
        "snowflake.key_columns": list(sf.key_columns) if sf and sf.key_columns else None,
    }


def _schedule_rules(schedule: dict[str, Any]) -> list[tuple[str, str]]:
    """Rules across keys, over the raw table: they hold whatever else is wrong with it (all problems at once)."""
    problems: list[tuple[str, str]] = []
    given = {key for key, value in schedule.items() if value is not None}
    sources = [key for key in ("sql", "sql_file", "workflow_id") if key in given]
    if len(sources) != 1:
        where = sources[1] if len(sources) > 1 else "sql"
        problems.append(
            (
                where,
                'give exactly one of sql = "…", sql_file = "sql/name.sql" or workflow_id = "…"'
                + (f" (found {', '.join(sources)})" if sources else ""),
            )
        )
    if "sql" in given and isinstance(schedule["sql"], str) and not schedule["sql"].strip():
        problems.append(("sql", "the query is empty"))
    if schedule.get("parameters") and "workflow_id" not in given:
        problems.append(("parameters", "only a saved workflow (workflow_id) takes parameters; remove them"))
    preset = schedule.get("preset") or ("custom" if "cron" in given else "daily")
    if preset == "custom":
        if "cron" not in given:
            problems.append(("cron", 'required with preset = "custom"; e.g. cron = "30 6 * * 1-5"'))
        for key in ("time", "day_of_week", "day_of_month"):
            if key in given:
                problems.append((key, "a cron schedule takes its times from cron; remove this key"))
    else:
        if "cron" in given:
            problems.append(("cron", f'preset = "{preset}" takes no cron; remove cron or set preset = "custom"'))
        if "time" not in given:
            problems.append(("time", f'required with preset = "{preset}"; e.g. time = "06:00"'))
        if preset == "weekly" and "day_of_week" not in given:
            problems.append(("day_of_week", 'required with preset = "weekly"; e.g. day_of_week = "monday"'))
        if preset != "weekly" and "day_of_week" in given:
            problems.append(("day_of_week", f"only a weekly schedule has a day_of_week (this one is {preset})"))
        if preset == "monthly" and "day_of_month" not in given:
            problems.append(("day_of_month", 'required with preset = "monthly"; e.g. day_of_month = 1'))
        if preset != "monthly" and "day_of_month" in given:
            problems.append(("day_of_month", f"only a monthly schedule has a day_of_month (this one is {preset})"))
    return problems


@dataclass(frozen=True)
class _Declared:
    """What the files declare, read from the raw tables: a schedule naming a user whose entry has a problem
    of its own is not also told that the user is undeclared."""

    users: set[str]
    instances: set[tuple[str, str]]
    snowflake: set[str]


def _raw_list(data: dict[str, Any], key: str) -> list[tuple[int, dict[str, Any]]]:
    items = data.get(key)
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)] if isinstance(items, list) else []


def validate(documents: list[Document], read_sql: SqlReader) -> Fleet:
    """The fleet the documents describe, or FleetInvalid with every problem found in one pass: each entry is
    checked on its own (its keys, its values, the rules across its keys) and against the others (declared
    users and instances, unique names, SQL files), whatever else is wrong with it. `read_sql(relative path)`
    returns a SQL file's text, or the Problem with it (missing, empty, outside the fleet directory)."""
    problems: list[Problem] = []
    users: list[tuple[str, int, FleetUser]] = []
    declared = _Declared(set(), set(), set())
    readable = [d for d in documents if d.data is not None and d.syntax_error is None]
    for document in documents:
        if document.syntax_error is not None or document.data is None:
            problems.append(Problem(document.file, "", f"not valid TOML: {document.syntax_error}"))
    for document in readable:
        assert document.data is not None
        try:
            FleetDocument.model_validate(document.data)
        except ValidationError as exc:
            problems += [_problem_from_error(document.file, error) for error in exc.errors(include_url=False)]
        for index, raw_user in _raw_list(document.data, "users"):
            email = str(raw_user.get("email", "")).lower()
            declared.users.add(email)
            declared.instances.update((email, str(i.get("instance_id"))) for _, i in _raw_list(raw_user, "instances"))
            if "snowflake" in raw_user:
                declared.snowflake.add(email)
            with contextlib.suppress(ValidationError):  # reported above, with the document's key paths
                users.append((document.file, index, FleetUser.model_validate(raw_user)))
    schedules: list[tuple[str, int, FleetSchedule, str | None]] = []
    names: dict[tuple[str, str], Where] = {}
    for document in readable:
        assert document.data is not None
        for index, raw_schedule in _raw_list(document.data, "schedules"):
            where = Where(document.file, f"schedules[{index}]")
            rules = _schedule_rules(raw_schedule) + _cross_rules(raw_schedule, where, declared, names)
            sql = raw_schedule.get("sql") if isinstance(raw_schedule.get("sql"), str) else None
            sql_file = raw_schedule.get("sql_file")
            if isinstance(sql_file, str) and not Path(sql_file).is_absolute():
                read = read_sql(sql_file)
                if isinstance(read, Problem):
                    rules.append(("sql_file", read.message))
                else:
                    sql = read
            problems += [Problem(where.file, f"{where.path}.{key}", message) for key, message in rules]
            try:
                schedule = FleetSchedule.model_validate(raw_schedule)
            except ValidationError:
                continue
            if not rules:  # the domain's own checks would only say the same again
                schedules.append((document.file, index, schedule, sql))
    try:
        fleet = _resolve(users, schedules)
    except FleetInvalid as exc:
        problems += exc.problems
    if problems:
        raise FleetInvalid(problems)
    return fleet


def _cross_rules(
    raw: dict[str, Any], where: Where, declared: _Declared, names: dict[tuple[str, str], Where]
) -> list[tuple[str, str]]:
    """A schedule against the rest of the fleet: its user, its instance, its name, its Snowflake target."""
    user, instance, name = raw.get("user"), raw.get("instance"), raw.get("name")
    if not isinstance(user, str):
        return []
    problems: list[tuple[str, str]] = []
    if _key(user) not in declared.users:
        known = ", ".join(sorted(declared.users)) or "none"
        problems.append(
            ("user", f'{user} is not declared; add a [[users]] entry with email = "{user}" (declared: {known})')
        )
        return problems
    if isinstance(instance, str) and (_key(user), instance) not in declared.instances:
        theirs = ", ".join(sorted(i for (u, i) in declared.instances if u == _key(user))) or "none"
        problems.append(
            (
                "instance",
                f"{user} declares no instance {instance!r}; add it to their instances, or use one of: {theirs}",
            )
        )
    if isinstance(name, str):
        earlier = names.setdefault((_key(user), name), where)
        if earlier is not where:
            problems.append(
                (
                    "name",
                    f"{user} has two schedules named {name!r} (also {earlier.file}: {earlier.path}); a name is "
                    "unique per user, rename one",
                )
            )
    if raw.get("snowflake") is not None and _key(user) not in declared.snowflake:
        problems.append(
            (
                "snowflake",
                f"{user} has no Snowflake target; add [users.snowflake] to their [[users]] entry, or remove this "
                "schedule's snowflake table",
            )
        )
    return problems


def _resolve(
    parsed_users: list[tuple[str, int, FleetUser]], parsed_schedules: list[tuple[str, int, FleetSchedule, str | None]]
) -> Fleet:
    problems: list[Problem] = []
    users: dict[str, DesiredUser] = {}
    instances: dict[tuple[str, str], DesiredInstance] = {}
    snowflake: dict[str, DesiredSnowflake] = {}
    for file, u_index, user in parsed_users:
        where = Where(file, f"users[{u_index}]")
        earlier = users.get(_key(user.email))
        if earlier is not None:
            problems.append(
                Problem(
                    file,
                    f"{where.path}.email",
                    f"{user.email} is declared twice (also {earlier.where.file}: {earlier.where.path}); keep one",
                )
            )
            continue
        users[_key(user.email)] = DesiredUser(user.email, user.region, where)
        for i_index, instance in enumerate(user.instances):
            i_where = Where(file, f"{where.path}.instances[{i_index}]")
            ikey = (_key(user.email), instance.instance_id)
            if ikey in instances:
                problems.append(
                    Problem(
                        file,
                        f"{i_where.path}.instance_id",
                        f"{instance.instance_id} is declared twice for {user.email} (also "
                        f"{instances[ikey].where.path}); keep one",
                    )
                )
                continue
            instances[ikey] = DesiredInstance(
                user.email,
                instance.instance_id,
                {
                    "advertiser_id": instance.advertiser_id,
                    "marketplace_id": instance.marketplace_id,
                    "region": instance.region or user.region,
                    "name": instance.name,
                },
                i_where,
            )
        if user.snowflake is not None:
            sf = user.snowflake
            snowflake[_key(user.email)] = DesiredSnowflake(
                user.email,
                {
                    "account": sf.account,
                    "user": sf.user,
                    "database": sf.database,
                    "schema": sf.schema_,
                    "warehouse": sf.warehouse,
                    "role": sf.role,
                    "host": sf.host,
                    "port": sf.port,
                    "protocol": sf.protocol,
                },
                sf.references(),
                Where(file, f"{where.path}.snowflake"),
            )
    schedules: dict[tuple[str, str], DesiredSchedule] = {}
    for file, s_index, schedule, sql in parsed_schedules:
        path = f"schedules[{s_index}]"
        owner = users.get(_key(schedule.user))
        if owner is None:
            continue  # its [[users]] entry has a problem of its own, reported
        problems += [Problem(file, f"{path}.{key}", message) for key, message in _model_rules(schedule, sql)]
        schedules[(_key(schedule.user), schedule.name)] = DesiredSchedule(
            owner.email, schedule.name, _desired_schedule_fields(schedule, sql), Where(file, path)
        )
    if problems:
        raise FleetInvalid(problems)
    return Fleet(list(users.values()), list(instances.values()), list(snowflake.values()), list(schedules.values()))


_DOMAIN_TO_FILE = {
    "time_of_day": "time",
    "cron_expression": "cron",
    "sql_query / workflow_id": "sql",
    "parameter_values": "parameters",
    "snowflake_table_name": "snowflake.table",
    "snowflake_key_columns": "snowflake.key_columns",
    "data_lag_days + lookback_days": "lookback_days",
}


def _model_rules(schedule: FleetSchedule, sql: str | None) -> list[tuple[str, str]]:
    """The same checks `schedules create` makes (the domain's models), in the file's key names."""
    problems: list[tuple[str, str]] = []
    try:
        schedule_model(schedule, sql)
    except (ValidationError, ValueError) as exc:
        errors = exc.errors(include_url=False) if isinstance(exc, ValidationError) else [{"msg": str(exc)}]
        for error in errors:
            message = str(error["msg"]).removeprefix("Value error, ")
            prefix, _, rest = message.partition(": ")
            key = _DOMAIN_TO_FILE.get(prefix, prefix if prefix in FleetSchedule.model_fields else "")
            problems.append((key or "name", rest if key else message))
    sf = schedule.snowflake
    if sql is not None and sf is not None and sf.key_columns:
        columns = select_output_columns(sql)
        if columns is not None:
            known = {c.upper() for c in columns}
            missing = [c for c in sf.key_columns if c.upper() not in known]
            if missing:
                problems.append(
                    (
                        "snowflake.key_columns",
                        f"{', '.join(missing)} not in the query's output ({', '.join(columns)}); name output "
                        "columns, or alias them in the SELECT",
                    )
                )
    return problems


def schedule_model(schedule: FleetSchedule, sql: str | None) -> ScheduleCreatePreset | ScheduleCreateCustom:
    """The `schedules create` model for a fleet schedule (its validation is the domain's)."""
    sf = schedule.snowflake
    common: dict[str, Any] = {
        "name": schedule.name,
        "user_email": schedule.user,
        "instance_id": schedule.instance,
        "sql_query": sql,
        "workflow_id": schedule.workflow_id,
        "parameter_values": dict(schedule.parameters),
        "timezone": schedule.timezone,
        "lookback_days": schedule.lookback_days,
        "data_lag_days": schedule.data_lag_days,
        "auto_pause_on_failure": schedule.auto_pause_on_failure,
        "failure_threshold": schedule.failure_threshold,
        "misfire_policy": schedule.misfire_policy,
        "catch_up_limit": schedule.catch_up_limit,
        "allow_overlap": schedule.allow_overlap,
        "snowflake_enabled": bool(sf and sf.enabled),
        "snowflake_table_name": sf.table if sf else None,
        "snowflake_schema_name": sf.schema_ if sf else None,
        "snowflake_key_columns": list(sf.key_columns) if sf and sf.key_columns else None,
    }
    preset = schedule.effective_preset()
    if preset == "custom":
        return ScheduleCreateCustom(cron_expression=schedule.cron or "", **common)
    return ScheduleCreatePreset(
        preset=preset,
        time_of_day=schedule.time or "",
        day_of_week=schedule.day_of_week,
        day_of_month=schedule.day_of_month,
        **common,
    )


def create_model(desired: DesiredSchedule) -> ScheduleCreatePreset | ScheduleCreateCustom:
    f = desired.fields
    fleet_schedule = FleetSchedule.model_validate(
        {
            "user": desired.user,
            "name": desired.name,
            "instance": f["instance"],
            "preset": f["preset"],
            "time": f["time"],
            "day_of_week": f["day_of_week"],
            "day_of_month": f["day_of_month"],
            "cron": f["cron"],
            "timezone": f["timezone"],
            "sql": f["sql"],
            "workflow_id": f["workflow_id"],
            "parameters": f["parameters"],
            "lookback_days": f["lookback_days"],
            "data_lag_days": f["data_lag_days"],
            "misfire_policy": f["misfire_policy"],
            "catch_up_limit": f["catch_up_limit"],
            "auto_pause_on_failure": f["auto_pause_on_failure"],
            "failure_threshold": f["failure_threshold"],
            "allow_overlap": f["allow_overlap"],
            "snowflake": (
                {
                    "table": f["snowflake.table"],
                    "schema": f["snowflake.schema"],
                    "key_columns": f["snowflake.key_columns"],
                    "enabled": f["snowflake.enabled"],
                }
                if f["snowflake.table"]
                else None
            ),
        }
    )
    return schedule_model(fleet_schedule, f["sql"])


# --- which columns a query outputs, where the SQL says so plainly -----------------------------------------

_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_STRINGS = re.compile(r"'(?:[^']|'')*'")
_ALIAS = re.compile(r"(?is)^.*\bAS\s+(\"?)([A-Za-z_][A-Za-z0-9_$]*)\1$")
_PLAIN = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_$]*\.)?([A-Za-z_][A-Za-z0-9_$]*)$")


def select_output_columns(sql: str) -> list[str] | None:
    """The output column names of the query's outermost SELECT, when each is an alias or a plain column;
    None when that cannot be told from the text (a `*`, an unnamed expression): then nothing is checked."""
    text = _STRINGS.sub("''", _COMMENTS.sub(" ", sql))
    depth = 0
    tokens = list(re.finditer(r"[()]|,|\bSELECT\b|\bFROM\b|\bDISTINCT\b", text, re.I))
    start = end = None
    items: list[str] = []
    for token in tokens:
        word = token.group(0).upper()
        if word == "(":
            depth += 1
        elif word == ")":
            depth -= 1
        elif depth == 0 and word == "SELECT" and start is None:
            start = token.end()
        elif depth == 0 and word == "DISTINCT" and start is not None and not text[start : token.start()].strip():
            start = token.end()  # SELECT DISTINCT: the columns start after it
        elif depth == 0 and word == "," and start is not None:
            items.append(text[start : token.start()])
            start = token.end()
        elif depth == 0 and word == "FROM" and start is not None:
            end = token.start()
            items.append(text[start:end])
            break
    if end is None:
        return None
    names: list[str] = []
    for item in items:
        item = " ".join(item.split())
        alias = _ALIAS.match(item)
        plain = _PLAIN.match(item)
        if alias:
            names.append(alias.group(2))
        elif plain:
            names.append(plain.group(1))
        else:
            return None
    return names


# --- what is stored, in the file's terms, and the diff ---------------------------------------------------

SCHEDULE_KEYS = (
    "instance",
    "preset",
    "time",
    "day_of_week",
    "day_of_month",
    "cron",
    "timezone",
    "sql",
    "workflow_id",
    "parameters",
    "lookback_days",
    "data_lag_days",
    "paused",
    "misfire_policy",
    "catch_up_limit",
    "auto_pause_on_failure",
    "failure_threshold",
    "allow_overlap",
    "snowflake.enabled",
    "snowflake.table",
    "snowflake.schema",
    "snowflake.key_columns",
)
# The file's keys as `schedules update` names them (ScheduleUpdate); `paused` is pause/resume.
UPDATE_FIELD = {
    "time": "time_of_day",
    "day_of_week": "day_of_week",
    "day_of_month": "day_of_month",
    "cron": "cron_expression",
    "timezone": "timezone",
    "sql": "sql_query",
    "workflow_id": "workflow_id",
    "parameters": "parameter_values",
    "lookback_days": "lookback_days",
    "data_lag_days": "data_lag_days",
    "misfire_policy": "misfire_policy",
    "catch_up_limit": "catch_up_limit",
    "auto_pause_on_failure": "auto_pause_on_failure",
    "failure_threshold": "failure_threshold",
    "allow_overlap": "allow_overlap",
    "snowflake.enabled": "snowflake_enabled",
    "snowflake.table": "snowflake_table_name",
    "snowflake.schema": "snowflake_schema_name",
    "snowflake.key_columns": "snowflake_key_columns",
}
GRID_KEYS = frozenset({"time", "day_of_week", "day_of_month", "cron", "timezone", "lookback_days", "data_lag_days"})
# Changed in place, these would make the schedule another one (its runs, its grid): refused with a way out.
FIXED_KEYS = {"instance": "another instance", "preset": "another preset"}


def schedule_fields(row: dict[str, Any]) -> dict[str, Any]:
    """A stored schedule (a workflow_schedules row joined with its instance id) in the file's terms."""
    return {
        "instance": row["instance_id"],
        "preset": row["preset"],
        "time": format_time(row["time_of_day"]),
        "day_of_week": WEEKDAYS[row["day_of_week"]] if row["day_of_week"] is not None else None,
        "day_of_month": row["day_of_month"],
        "cron": row["cron_expression"],
        "timezone": row["timezone"],
        "sql": row["sql_query"],
        "workflow_id": row["workflow_id"],
        "parameters": dict(row["parameter_values"] or {}),
        "lookback_days": row["lookback_days"],
        "data_lag_days": row["data_lag_days"],
        "paused": not row["is_active"],
        "misfire_policy": row["misfire_policy"],
        "catch_up_limit": row["catch_up_limit"],
        "auto_pause_on_failure": row["auto_pause_on_failure"],
        "failure_threshold": row["failure_threshold"],
        "allow_overlap": row["allow_overlap"],
        "snowflake.enabled": bool(row["snowflake_enabled"]),
        "snowflake.table": row["snowflake_table_name"],
        "snowflake.schema": row["snowflake_schema_name"],
        "snowflake.key_columns": list(row["snowflake_key_columns"]) if row["snowflake_key_columns"] else None,
    }


@dataclass(frozen=True)
class StoredSchedule:
    id: int
    fields: dict[str, Any]
    paused_reason: str | None


@dataclass(frozen=True)
class StoredSnowflake:
    fields: dict[str, Any]
    references: dict[str, dict[str, str]] | None  # None: set by `recomamp snowflake set`, no reference kept
    secrets: dict[str, str] = field(repr=False)  # decrypted, to tell a rotated secret from an unchanged one


@dataclass(frozen=True)
class Stored:
    """What the database holds, keyed like the fleet: users by lower-cased email."""

    users: dict[str, dict[str, Any]]  # email → {email, region}
    instances: dict[tuple[str, str], dict[str, Any]]  # (email, instance_id) → advertiser_id, marketplace_id, …
    snowflake: dict[str, StoredSnowflake]
    schedules: dict[tuple[str, str], list[StoredSchedule]]  # (email, name) → live (not archived) schedules


@dataclass(frozen=True)
class FieldChange:
    key: str
    old: Any
    new: Any
    secret: bool = False  # shown as "changed", never as a value


@dataclass
class Change:
    op: Literal["+", "~", "-"]
    kind: Literal["user", "instance", "snowflake", "schedule"]
    user: str
    name: str
    fields: list[FieldChange]
    notes: list[str] = field(default_factory=list)
    refused: str | None = None  # why apply cannot make it; the plan says so and apply writes nothing
    schedule_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "kind": self.kind,
            "user": self.user,
            "name": self.name,
            "schedule_id": self.schedule_id,
            "fields": [
                {"key": f.key, "old": "(secret)" if f.secret else f.old, "new": "(secret)" if f.secret else f.new}
                for f in self.fields
            ],
            "notes": self.notes,
            "refused": self.refused,
        }


def _field_changes(old: dict[str, Any], new: dict[str, Any], keys: Iterable[str]) -> list[FieldChange]:
    return [FieldChange(key, old.get(key), new.get(key)) for key in keys if old.get(key) != new.get(key)]


def diff(fleet: Fleet, stored: Stored, *, prune: bool) -> list[Change]:
    """What apply does to make the database say what the fleet says, grouped by user in the file's order.
    Users, instances and Snowflake targets are created or changed, never removed (that is a person's call);
    with `prune`, the live schedules of the file's users that the file does not name are archived."""
    by_user: dict[str, list[Change]] = {_key(u.email): [] for u in fleet.users}
    for user in fleet.users:
        existing = stored.users.get(_key(user.email))
        if existing is None:
            by_user[_key(user.email)].append(
                Change("+", "user", user.email, user.email, [FieldChange("region", None, user.region)])
            )
        elif existing.get("region") != user.region:
            by_user[_key(user.email)].append(
                Change(
                    "~", "user", user.email, user.email, [FieldChange("region", existing.get("region"), user.region)]
                )
            )
    for target in fleet.snowflake:
        snowflake_change = _snowflake_change(fleet, target, stored.snowflake.get(_key(target.user)))
        if snowflake_change is not None:
            by_user[_key(target.user)].append(snowflake_change)
    for instance in fleet.instances:
        current_instance = stored.instances.get((_key(instance.user), instance.instance_id))
        if current_instance is None:
            fields = [FieldChange(k, None, v) for k, v in instance.fields.items() if v is not None]
            by_user[_key(instance.user)].append(Change("+", "instance", instance.user, instance.instance_id, fields))
            continue
        fields = _field_changes(current_instance, instance.fields, instance.fields)
        if fields:
            by_user[_key(instance.user)].append(Change("~", "instance", instance.user, instance.instance_id, fields))
    tables_in_use = {
        (email, (s.fields["snowflake.schema"] or "").upper(), (s.fields["snowflake.table"] or "").upper())
        for (email, _), found in stored.schedules.items()
        for s in found
        if s.fields["snowflake.table"]
    }
    named: set[tuple[str, str]] = set()
    for schedule in fleet.schedules:
        skey = (_key(schedule.user), schedule.name)
        named.add(skey)
        schedule_change = _schedule_change(schedule, stored.schedules.get(skey, []), tables_in_use)
        if schedule_change is not None:
            by_user[skey[0]].append(schedule_change)
    if prune:
        for (email, name), found in stored.schedules.items():
            if email in by_user and (email, name) not in named:
                for stored_schedule in found:
                    change = Change("-", "schedule", stored.users[email]["email"], name, [])
                    change.schedule_id = stored_schedule.id
                    change.notes.append("archived: its runs are kept, a run in flight finishes, it fires no more")
                    by_user[email].append(change)
    order = {"user": 0, "snowflake": 1, "instance": 2, "schedule": 3}
    changes: list[Change] = []
    for email in by_user:
        changes += sorted(by_user[email], key=lambda c: (order[c.kind], c.op == "-"))
    return changes


def _snowflake_change(fleet: Fleet, target: DesiredSnowflake, current: StoredSnowflake | None) -> Change | None:
    """A user's Snowflake target: created, or its changed fields; a secret is compared behind its reference."""
    new_fields = dict(target.fields)
    if current is None:
        fields = [FieldChange(k, None, v) for k, v in new_fields.items() if v is not None]
        fields += [FieldChange(k, None, ref, secret=False) for k, ref in target.references.items()]
        return Change("+", "snowflake", target.user, "snowflake", fields)
    fields = _field_changes(current.fields, new_fields, new_fields)
    notes: list[str] = []
    for key in SECRET_KEYS:
        old_ref = (current.references or {}).get(key)
        new_ref = target.references.get(key)
        if current.references is None and new_ref is not None:
            fields.append(FieldChange(key, "(stored by `snowflake set`, no reference)", new_ref))
        elif old_ref != new_ref:
            fields.append(FieldChange(key, old_ref, new_ref))
        elif new_ref is not None and current.secrets.get(key) != fleet.secrets.get((_key(target.user), key)):
            fields.append(FieldChange(key, "(secret)", "(secret)", secret=True))
            notes.append(f"{key}: the secret behind {_ref_text(new_ref)} changed; apply stores the new one")
    return Change("~", "snowflake", target.user, "snowflake", fields, notes) if fields else None


def _schedule_change(
    schedule: DesiredSchedule, found: list[StoredSchedule], tables_in_use: set[tuple[str, str, str]]
) -> Change | None:
    """One schedule of the file against the live ones of its name: created, changed (with what the change
    implies, or why it is refused), or nothing to do."""
    new = schedule.fields
    table = (_key(schedule.user), (new["snowflake.schema"] or "").upper(), (new["snowflake.table"] or "").upper())
    new_table_note = (
        f"a new Snowflake table: {new['snowflake.schema'] + '.' if new['snowflake.schema'] else ''}"
        f"{new['snowflake.table']} (created by its first load)"
    )
    if len(found) > 1:
        ids = ", ".join(str(s.id) for s in found)
        change = Change("~", "schedule", schedule.user, schedule.name, [])
        change.refused = (
            f"{schedule.user} has {len(found)} live schedules named {schedule.name!r} (ids {ids}); the name is "
            "the fleet's key: rename all but one with `recomamp schedules update ID --name …`"
        )
        return change
    if not found:
        fields = [FieldChange(k, None, new[k]) for k in SCHEDULE_KEYS if new[k] not in (None, {}, False)]
        change = Change("+", "schedule", schedule.user, schedule.name, fields)
        if new["paused"]:
            change.notes.append("created paused: it does not fire until paused = false")
        if new["snowflake.table"] and table not in tables_in_use:
            change.notes.append(new_table_note)
        return change
    current_schedule = found[0]
    fields = _field_changes(current_schedule.fields, new, SCHEDULE_KEYS)
    if not fields:
        return None
    change = Change("~", "schedule", schedule.user, schedule.name, fields, schedule_id=current_schedule.id)
    changed = {f.key for f in fields}
    for key, what in FIXED_KEYS.items():
        if key in changed:
            change.refused = (
                f"{key}: a schedule cannot move to {what} in place (its runs and windows belong to the old "
                f"one); give it a new name, and remove the old one with --prune (its history is kept)"
            )
    if changed & GRID_KEYS:
        change.notes.append(
            f"moves the grid ({', '.join(sorted(changed & GRID_KEYS))}): the next fire is computed again"
        )
    if "paused" in changed:
        if new["paused"]:
            change.notes.append("pauses it: no new runs; a run in flight finishes")
        else:
            reason = f" (paused: {current_schedule.paused_reason})" if current_schedule.paused_reason else ""
            change.notes.append(f"resumes it{reason} from its next fire; missed fires are not owed (backfill them)")
    if "sql" in changed or "workflow_id" in changed or "parameters" in changed:
        change.notes.append("later runs send the new query; runs already created keep theirs")
    if changed & {"snowflake.table", "snowflake.schema"} and new["snowflake.table"] and table not in tables_in_use:
        change.notes.append(new_table_note)
    if "snowflake.key_columns" in changed and new["snowflake.key_columns"]:
        change.notes.append(f"later loads MERGE on {', '.join(new['snowflake.key_columns'])}")
    return change


def _ref_text(reference: dict[str, str]) -> str:
    return f"file {reference['file']}" if "file" in reference else f"credential {reference.get('credential')}"
