"""The schedule models the CLI (and any later API) speaks. Every Snowflake field is optional, so older
callers keep working. Validation here is pure: timezones, cron, identifiers, one of SQL or workflow."""

from __future__ import annotations

from datetime import datetime, time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recomamp.domain.identifiers import validate_identifier
from recomamp.domain.schedules import (
    DEFAULT_DATA_LAG_DAYS,
    Cadence,
    Preset,
    check_cron,
    parse_time_of_day,
    parse_weekday,
    zone,
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# AMC keeps about 13 months of event data: a window that starts further back than this has nothing in it.
AMC_RETENTION_DAYS = 400
MAX_FAILURE_THRESHOLD = 1000


def check_lag_and_lookback(lag: int | None, lookback: int | None) -> None:
    if lag is not None and not 0 <= lag <= AMC_RETENTION_DAYS:
        raise ValueError(
            f"data_lag_days: {lag} is out of range; use 0 to {AMC_RETENTION_DAYS} (AMC keeps about 13 months of data, "
            "so a window further back is empty)"
        )
    if lookback is not None and not 1 <= lookback <= AMC_RETENTION_DAYS:
        raise ValueError(
            f"lookback_days: {lookback} is out of range; use 1 to {AMC_RETENTION_DAYS} (AMC keeps about 13 months of "
            "data)"
        )
    if lag is not None and lookback is not None and lag + lookback > AMC_RETENTION_DAYS:
        raise ValueError(
            f"data_lag_days + lookback_days: {lag + lookback} days back is beyond AMC's retention of about "
            f"{AMC_RETENTION_DAYS} days; shorten one of them"
        )


def check_failure_threshold(value: int | None) -> None:
    if value is not None and not 1 <= value <= MAX_FAILURE_THRESHOLD:
        raise ValueError(f"failure_threshold: {value} is out of range; use 1 to {MAX_FAILURE_THRESHOLD}")


def check_catch_up_limit(value: int | None) -> None:
    if value is not None and not 1 <= value <= 1000:
        raise ValueError(f"catch_up_limit: {value} is out of range; use 1 to 1000 missed windows")


class _SnowflakeFields(_Model):
    snowflake_enabled: bool | None = None  # None: enabled when a table is named
    snowflake_table_name: str | None = None
    snowflake_schema_name: str | None = None  # None: the user's default schema
    snowflake_key_columns: list[str] | None = None

    @field_validator("snowflake_table_name")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        return None if value is None else validate_identifier(value, "snowflake_table_name")

    @field_validator("snowflake_schema_name")
    @classmethod
    def _schema(cls, value: str | None) -> str | None:
        return None if value is None else validate_identifier(value, "snowflake_schema_name")

    @field_validator("snowflake_key_columns")
    @classmethod
    def _keys(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("snowflake_key_columns: give at least one column, or leave it out")
        return [validate_identifier(column, "snowflake_key_columns") for column in value]


class _ScheduleCreate(_SnowflakeFields):
    name: str = Field(min_length=1, max_length=200)
    user_email: str = Field(min_length=3)
    instance_id: str = Field(min_length=1, description="the AMC instance id, as added with `instances add`")
    sql_query: str | None = None
    workflow_id: str | None = None
    parameter_values: dict[str, str] = Field(default_factory=dict)
    timezone: str = "UTC"
    lookback_days: int | None = None
    data_lag_days: int = DEFAULT_DATA_LAG_DAYS
    auto_pause_on_failure: bool = False
    failure_threshold: int = 3
    misfire_policy: Literal["coalesce", "catch_up"] = "coalesce"
    catch_up_limit: int = 31
    allow_overlap: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> _ScheduleCreate:
        check_lag_and_lookback(self.data_lag_days, self.lookback_days)
        check_failure_threshold(self.failure_threshold)
        check_catch_up_limit(self.catch_up_limit)
        return self

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        zone(value)
        return value

    @model_validator(mode="after")
    def _query_and_snowflake(self) -> _ScheduleCreate:
        has_sql = bool(self.sql_query and self.sql_query.strip())
        if has_sql == bool(self.workflow_id):
            raise ValueError("sql_query / workflow_id: give exactly one: ad-hoc SQL, or a saved workflow id")
        if self.parameter_values and not self.workflow_id:
            raise ValueError("parameter_values: only a saved workflow (workflow_id) takes parameters")
        if self.snowflake_enabled and not self.snowflake_table_name:
            raise ValueError("snowflake_table_name: required when Snowflake is enabled")
        return self

    @property
    def snowflake_on(self) -> bool:
        if self.snowflake_enabled is None:
            return self.snowflake_table_name is not None
        return self.snowflake_enabled

    def cadence(self) -> Cadence:
        raise NotImplementedError


class ScheduleCreatePreset(_ScheduleCreate):
    preset: Literal["daily", "weekly", "monthly"]
    time_of_day: str
    day_of_week: str | int | None = None
    day_of_month: int | None = Field(default=None, ge=1, le=31)

    @field_validator("time_of_day")
    @classmethod
    def _time(cls, value: str) -> str:
        parse_time_of_day(value)
        return value

    @model_validator(mode="after")
    def _preset_fields(self) -> ScheduleCreatePreset:
        self.cadence()
        return self

    def cadence(self) -> Cadence:
        return Cadence(
            preset=Preset(self.preset),
            timezone=self.timezone,
            time_of_day=parse_time_of_day(self.time_of_day),
            day_of_week=parse_weekday(str(self.day_of_week)) if self.day_of_week is not None else None,
            day_of_month=self.day_of_month,
            lookback_days=self.lookback_days,
            data_lag_days=self.data_lag_days,
        )


class ScheduleCreateCustom(_ScheduleCreate):
    cron_expression: str

    @field_validator("cron_expression")
    @classmethod
    def _cron(cls, value: str) -> str:
        check_cron(value)
        return value

    def cadence(self) -> Cadence:
        return Cadence(
            preset=Preset.CUSTOM,
            timezone=self.timezone,
            cron_expression=self.cron_expression,
            lookback_days=self.lookback_days,
            data_lag_days=self.data_lag_days,
        )


class ScheduleUpdate(_SnowflakeFields):
    """Only the fields given change. The cadence fields are checked together with the stored ones."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    sql_query: str | None = None
    workflow_id: str | None = None
    parameter_values: dict[str, str] | None = None
    time_of_day: str | None = None
    day_of_week: str | int | None = None
    day_of_month: int | None = Field(default=None, ge=1, le=31)
    cron_expression: str | None = None
    timezone: str | None = None
    lookback_days: int | None = None
    data_lag_days: int | None = None
    auto_pause_on_failure: bool | None = None
    failure_threshold: int | None = None
    misfire_policy: Literal["coalesce", "catch_up"] | None = None
    catch_up_limit: int | None = None
    allow_overlap: bool | None = None

    @model_validator(mode="after")
    def _bounds(self) -> ScheduleUpdate:
        check_lag_and_lookback(self.data_lag_days, self.lookback_days)
        check_failure_threshold(self.failure_threshold)
        check_catch_up_limit(self.catch_up_limit)
        return self

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is not None:
            zone(value)
        return value

    @field_validator("time_of_day")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None:
            parse_time_of_day(value)
        return value

    @field_validator("cron_expression")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            check_cron(value)
        return value

    def changes(self) -> dict[str, Any]:
        changed = self.model_dump(exclude_unset=True)
        if "time_of_day" in changed and changed["time_of_day"] is not None:
            changed["time_of_day"] = parse_time_of_day(changed["time_of_day"])
        if "day_of_week" in changed and changed["day_of_week"] is not None:
            changed["day_of_week"] = parse_weekday(str(changed["day_of_week"]))
        return changed


class ScheduleResponse(_Model):
    id: int
    name: str
    user_email: str
    instance_id: str
    sql_query: str | None
    workflow_id: str | None
    parameter_values: dict[str, str]
    preset: str
    time_of_day: time | None
    day_of_week: int | None
    day_of_month: int | None
    cron_expression: str | None
    timezone: str
    lookback_days: int | None
    data_lag_days: int
    next_run_at: datetime | None
    is_active: bool
    paused_reason: str | None
    consecutive_failures: int
    auto_pause_on_failure: bool
    failure_threshold: int
    snowflake_enabled: bool
    snowflake_table_name: str | None
    snowflake_schema_name: str | None
    snowflake_key_columns: list[str] | None
    misfire_policy: str
    catch_up_limit: int
    allow_overlap: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ScheduleResponse:
        data = dict(row)
        data["snowflake_enabled"] = bool(data.get("snowflake_enabled"))
        return cls.model_validate({name: data.get(name) for name in cls.model_fields})
