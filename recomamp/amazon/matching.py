"""What AMC sends and echoes, and whether an execution it lists is the one an uncertain POST created. Pure.

AMC has no idempotency key: after a POST whose answer was lost, the executions created since the attempt
began are listed and each is compared with every fact AMC echoes (../shared/AMC_API.md):
- the workflow id (a saved workflow's; or the run-unique id an ad-hoc workflow was given, when AMC keeps it);
- the window as sent (`timeWindowStartOriginal`, `…EndOriginal`, `…TimeZoneOriginal`), never the UTC copy;
- `parameterValues`;
- for ad-hoc SQL, the top-level `sqlQuery` (with or without our marker comment: whether comments survive
  is unconfirmed);
- a creation time after the attempt began, less a small skew.
An execution that differs in any echoed fact is never adopted. An ad-hoc execution is adopted only on an
identifying fact (our marker in its SQL, our run-unique workflow id, or the same SQL text).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "REJECTED"})
RUNNING_STATUSES = frozenset({"PENDING", "RUNNING", "PUBLISHING"})
MARKER_PREFIX = "-- recomamp-run:"
MARKER_ID_PREFIX = "recomamp-run"
_MARKER = re.compile(r"--\s*recomamp-run:\s*(\S+)")
_LINE_COMMENT = re.compile(r"--[^\n]*")
_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_SPACE = re.compile(r"\s+")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


def amc_local_time(value: datetime) -> str:
    """AMC's wall-clock format: `yyyy-MM-ddTHH:mm:ss`, no zone, no fraction."""
    return value.strftime(_TIME_FORMAT)


def parse_amc_time(value: object) -> datetime | None:
    """An AMC timestamp (`…Z`, with or without a fraction) as an aware UTC datetime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def normalized_sql(sql: str) -> str:
    """SQL without comments and with whitespace collapsed: what survives AMC either way."""
    return _SPACE.sub(" ", _LINE_COMMENT.sub("", _BLOCK_COMMENT.sub("", sql))).strip()


@dataclass(frozen=True)
class ExecutionRequest:
    """What to run, over which window. Exactly one of `sql_query` and `workflow_id`."""

    window_start: datetime  # local wall time in `timezone`, naive
    window_end: datetime
    timezone: str
    sql_query: str | None = None
    workflow_id: str | None = None
    parameter_values: Mapping[str, str] = field(default_factory=dict)
    timeout_seconds: int | None = None

    def __post_init__(self) -> None:
        if (self.sql_query is None) == (self.workflow_id is None):
            raise ValueError("give exactly one of sql_query and workflow_id")

    def sent_sql(self, marker: str | None) -> str | None:
        if self.sql_query is None:
            return None
        sql = self.sql_query.rstrip()
        # The marker rides in a SQL comment too: if AMC keeps comments, the listing shows it.
        return f"{sql}\n{MARKER_PREFIX} {marker}" if marker else sql

    def body(self, marker: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "timeWindowType": "EXPLICIT",
            "timeWindowStart": amc_local_time(self.window_start),
            "timeWindowEnd": amc_local_time(self.window_end),
            "timeWindowTimeZone": self.timezone,
        }
        if self.sql_query is not None:
            workflow: dict[str, str] = {"sqlQuery": self.sent_sql(marker) or ""}
            if marker:
                # A run-unique id for the ad-hoc workflow (as Amazon's AWS sample gives one): whether AMC
                # echoes it is unconfirmed, so it is one fact among others, never the only one.
                workflow = {"workflowId": marker, **workflow}
            body["workflow"] = workflow
        else:
            body["workflowId"] = self.workflow_id
        if self.parameter_values:
            body["parameterValues"] = dict(self.parameter_values)
        if self.timeout_seconds:
            body["workflowExecutionTimeoutSeconds"] = self.timeout_seconds
        return body


@dataclass(frozen=True)
class OutputColumn:
    name: str
    data_type: str | None  # STRING, LONG, DOUBLE, DECIMAL, BOOLEAN, DATE, TIMESTAMP…; None when AMC gave none
    column_type: str | None = None  # DIMENSION or METRIC


@dataclass(frozen=True)
class OutputChannel:
    type: str  # DOWNLOAD, PUBLISH, ACR
    status: str
    status_reason: str | None


@dataclass(frozen=True)
class Execution:
    """An execution as AMC returns it: a flat object, never wrapped."""

    execution_id: str
    status: str
    status_reason: str | None
    workflow_id: str | None
    create_time: datetime | None
    expire_time: datetime | None
    window_start_original: str | None
    window_end_original: str | None
    window_timezone_original: str | None
    parameter_values: Mapping[str, str] | None
    sql_query: str | None  # only with includeWorkflow=true, and only at the top level
    output_columns: tuple[OutputColumn, ...]
    output_channels: tuple[OutputChannel, ...]
    raw: Mapping[str, Any]

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def marker(self) -> str | None:
        match = _MARKER.search(self.sql_query or "")
        return match.group(1) if match else None

    def unavailable_download(self) -> str | None:
        """The statusReason of a DOWNLOAD channel AMC marked UNAVAILABLE, if any."""
        for channel in self.output_channels:
            if channel.type.upper() == "DOWNLOAD" and channel.status.upper() == "UNAVAILABLE":
                return channel.status_reason or "the download channel is UNAVAILABLE"
        return None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Execution:
        columns = tuple(
            OutputColumn(
                str(c.get("name")), str(c["dataType"]).upper() if c.get("dataType") else None, c.get("columnType")
            )
            for c in body.get("outputColumns") or ()
            if isinstance(c, dict) and c.get("name")
        )
        channels = tuple(
            OutputChannel(
                str(c.get("type") or c.get("outputChannelType") or ""),
                str(c.get("status") or ""),
                c.get("statusReason"),
            )
            for c in body.get("outputChannels") or ()
            if isinstance(c, dict)
        )
        parameters = body.get("parameterValues")
        return cls(
            execution_id=str(body["workflowExecutionId"]),
            status=str(body.get("status", "UNKNOWN")),
            status_reason=body.get("statusReason"),
            workflow_id=body.get("workflowId"),
            create_time=parse_amc_time(body.get("createTime")),
            expire_time=parse_amc_time(body.get("expireTime")),
            window_start_original=body.get("timeWindowStartOriginal"),
            window_end_original=body.get("timeWindowEndOriginal"),
            window_timezone_original=body.get("timeWindowTimeZoneOriginal"),
            parameter_values={str(k): str(v) for k, v in parameters.items()} if isinstance(parameters, dict) else None,
            sql_query=body.get("sqlQuery") if isinstance(body.get("sqlQuery"), str) else None,
            output_columns=columns,
            output_channels=channels,
            raw=body,
        )


@dataclass(frozen=True)
class Verdict:
    adopt: bool
    matched_on: tuple[str, ...] = ()
    differs_on: str | None = None
    needs_sql: bool = False  # ad-hoc, and nothing identifying was echoed: fetch it with includeWorkflow=true


CREATION_SKEW = timedelta(minutes=2)


def judge(execution: Execution, request: ExecutionRequest, marker: str, attempt_began: datetime) -> Verdict:
    """Is `execution` the one this run's POST (begun at `attempt_began`) created? Every echoed fact must agree."""
    matched: list[str] = []
    if execution.create_time is not None:
        if execution.create_time < attempt_began - CREATION_SKEW:
            return Verdict(False, differs_on="created before the attempt began")
        matched.append("createTime")
    for name, sent, echoed in (
        ("timeWindowStartOriginal", amc_local_time(request.window_start), execution.window_start_original),
        ("timeWindowEndOriginal", amc_local_time(request.window_end), execution.window_end_original),
        ("timeWindowTimeZoneOriginal", request.timezone, execution.window_timezone_original),
    ):
        if echoed is None:
            return Verdict(False, differs_on=f"{name} was not echoed")
        if echoed != sent:
            return Verdict(False, differs_on=name)
        matched.append(name)
    if dict(execution.parameter_values or {}) != dict(request.parameter_values):
        return Verdict(False, differs_on="parameterValues")
    matched.append("parameterValues")

    if request.workflow_id is not None:
        if execution.workflow_id != request.workflow_id:
            return Verdict(False, differs_on="workflowId")
        matched.append("workflowId")
        return Verdict(True, tuple(matched))

    # Ad-hoc SQL: some fact must say it is ours.
    identified = False
    echoed_id = execution.workflow_id
    if echoed_id == marker:
        matched.append("workflowId (run-unique)")
        identified = True
    elif echoed_id is not None and echoed_id.startswith(MARKER_ID_PREFIX):
        return Verdict(False, differs_on="workflowId (another run's)")
    if execution.sql_query is not None:
        echoed_marker = execution.marker
        if echoed_marker is not None:
            if echoed_marker != marker:
                return Verdict(False, differs_on="sqlQuery marker (another run's)")
            matched.append("sqlQuery marker")
            identified = True
        elif normalized_sql(execution.sql_query) != normalized_sql(request.sql_query or ""):
            return Verdict(False, differs_on="sqlQuery")
        else:
            matched.append("sqlQuery text")
            identified = True
    if not identified:
        return Verdict(False, needs_sql=execution.sql_query is None, differs_on="nothing identifying was echoed")
    return Verdict(True, tuple(matched))
