"""The AMC half of the sandbox's simulator, following ../shared/AMC_API.md, not the client's convenience:
flat execution objects with the published fields: windows converted to UTC with a Z plus the `…Original`
fields as sent, executionCategory, expireTime, dataGaps, outputColumns, and the SQL as a top-level `sqlQuery`
only with includeWorkflow=true. Lists need workflowId or minCreationTime, the latter strictly
`yyyy-MM-ddTHH:mm:ss` with a timeZone (a Z or a fraction is a 400), with nextToken pages. PUT (cancel) answers
with an empty object; 400 when already terminal. GET /amc/accounts and GET /amc/instances (with apiEndpoint).
The daily ad-hoc quota per instance, with a refusal whose status is configurable. Results behind pre-signed
links that expire (403 AccessDenied XML), results that expire with the execution.

Facts marked [unconfirmed] can be played either way (`Unconfirmed`): whether SQL comments survive, whether an
ad-hoc workflowId is echoed, whether every result part repeats the header, whether lists carry the SQL, and
how long lists lag a POST.

A call is authenticated with an access token the LWA half issued. Its `/_sandbox/*` routes, each a POST of a
JSON body (answered with JSON):
- `/_sandbox/instances/{ID}` {profile fields}: rows, files and timings of that instance's results.
- `/_sandbox/settings` {…}: the [unconfirmed] behaviours and the quota.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from recomamp.sandbox.results_data import RESULT_SCHEMA, generate_csv, part_bounds
from recomamp.sandbox.simulator.faults import Fault, FaultScript, json_response, play
from recomamp.sandbox.simulator.lwa import LwaSimulator

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "REJECTED"})
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
_STRICT_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")
_LINE_COMMENT = re.compile(r"--[^\n]*")


def _utc_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_DEFERRED_FAULT = web.RequestKey("deferred_fault", Fault)


@dataclass
class Unconfirmed:
    """How the simulator answers where ../shared/AMC_API.md marks a fact [unconfirmed]."""

    keeps_sql_comments: bool = True  # the SQL in sqlQuery still holds its -- comments
    echoes_adhoc_workflow_id: bool = True  # an ad-hoc execution's workflowId is the one sent
    header_in_every_part: bool = True  # every result part starts with the header row
    list_includes_sql: bool = True  # lists with includeWorkflow=true carry sqlQuery (GET always does)
    listing_lag_seconds: float = 0.0  # a new execution shows in lists only after this


@dataclass
class InstanceProfile:
    """How executions on one AMC instance behave."""

    rows: int = 120
    files: int = 3
    pending_seconds: float = 0.0
    running_seconds: float = 0.0
    fail_reason: str | None = None  # executions end FAILED with this statusReason
    download_unavailable: str | None = None  # the DOWNLOAD output channel is UNAVAILABLE with this reason
    retention_days: int = 400
    restatement: int = 0  # bump to change the values (not the keys) of a re-run: AMC restates data


@dataclass
class SimExecution:
    execution_id: str
    instance_id: str
    workflow_id: str
    sql_query: str | None  # as AMC keeps it
    parameter_values: dict[str, str]
    window_start: str | None  # as sent
    window_end: str | None
    window_timezone: str | None
    created_monotonic: float
    create_time: datetime
    expire_time: datetime
    profile: InstanceProfile
    timeout_seconds: int = 21_600
    cancelled_at: datetime | None = None

    @property
    def restatement(self) -> int:
        return self.profile.restatement

    def status(self, now: float) -> str:
        if self.cancelled_at is not None:
            return "CANCELLED"
        elapsed = now - self.created_monotonic
        if elapsed < self.profile.pending_seconds:
            return "PENDING"
        if elapsed < self.profile.pending_seconds + self.profile.running_seconds:
            return "RUNNING"
        return "FAILED" if self.profile.fail_reason else "SUCCEEDED"


@dataclass
class SimInstance:
    instance_id: str
    account_id: str
    marketplace_id: str
    name: str
    api_endpoint: str | None  # None: the simulator's own URL


class AmcApiSimulator:
    def __init__(
        self,
        lwa: LwaSimulator,
        faults: FaultScript,
        *,
        link_ttl_seconds: float,
        result_ttl_seconds: float,
        list_page_size: int,
        url_page_size: int,
        default_profile: InstanceProfile | None,
        adhoc_quota: int | None,
        quota_window_seconds: float,
        quota_refusal_status: int,
        unconfirmed: Unconfirmed | None,
    ) -> None:
        self.lwa = lwa
        self.faults = faults
        self.link_ttl_seconds = link_ttl_seconds
        self.result_ttl_seconds = result_ttl_seconds
        self.list_page_size = list_page_size
        self.url_page_size = url_page_size
        self.default_profile = default_profile or InstanceProfile()
        self.adhoc_quota = adhoc_quota
        self.quota_window_seconds = quota_window_seconds
        self.quota_refusal_status = quota_refusal_status
        self.unconfirmed = unconfirmed or Unconfirmed()
        self.profiles: dict[str, InstanceProfile] = {}
        self.instances: dict[str, SimInstance] = {}
        self.accounts_of: dict[str, list[str]] = {}  # email -> instance ids
        self.executions: dict[str, SimExecution] = {}
        self.submissions: dict[str, deque[float]] = {}  # instance -> POST times (wall clock), for the quota
        self.workflows: dict[tuple[str, str], dict[str, Any]] = {}
        self._signing_key = secrets.token_bytes(32)
        self.base_url = ""  # where it is served: download links and apiEndpoint point here

    # --- scripting, from Python ----------------------------------------------------------------------

    def add_instance(
        self,
        email: str,
        instance_id: str,
        *,
        account_id: str | None = None,
        marketplace_id: str = "ATVPDKIKX0DER",
        name: str | None = None,
        api_endpoint: str | None = None,
    ) -> SimInstance:
        """An AMC instance the user can see in discovery (reporting works on any instance id)."""
        instance = SimInstance(
            instance_id, account_id or f"ENTITY-{instance_id}", marketplace_id, name or instance_id, api_endpoint
        )
        self.instances[instance_id] = instance
        self.accounts_of.setdefault(email, []).append(instance_id)
        return instance

    def profile(self, instance_id: str) -> InstanceProfile:
        return self.profiles.setdefault(instance_id, InstanceProfile(**self.default_profile.__dict__))

    def add_workflow(self, instance_id: str, workflow_id: str, sql_query: str) -> None:
        self.workflows[(instance_id, workflow_id)] = {"workflowId": workflow_id, "sqlQuery": sql_query}

    def executions_for(self, instance_id: str) -> list[SimExecution]:
        return [e for e in self.executions.values() if e.instance_id == instance_id]

    def create_console_execution(
        self,
        instance_id: str,
        *,
        sql_query: str | None = None,
        workflow_id: str | None = None,
        window_start: str,
        window_end: str,
        timezone: str,
        parameter_values: dict[str, str] | None = None,
    ) -> SimExecution:
        """An execution an analyst started from the AMC console: it shares the instance, not the run."""
        body: dict[str, Any] = {
            "timeWindowType": "EXPLICIT",
            "timeWindowStart": window_start,
            "timeWindowEnd": window_end,
            "timeWindowTimeZone": timezone,
            "parameterValues": parameter_values or {},
        }
        if sql_query is not None:
            body["workflow"] = {"sqlQuery": sql_query}
        else:
            body["workflowId"] = workflow_id
        problem, execution = self._validate_create(instance_id, body)
        if problem is not None or execution is None:
            raise ValueError(problem)
        self.executions[execution.execution_id] = execution
        return execution

    # --- serving -------------------------------------------------------------------------------------

    def mount(self, app: web.Application) -> None:
        app.router.add_get("/amc/accounts", self._accounts)
        app.router.add_get("/amc/instances", self._instances)
        base = "/amc/reporting/{instance_id}"
        app.router.add_post(f"{base}/workflowExecutions", self._create_execution)
        app.router.add_get(f"{base}/workflowExecutions", self._list_executions)
        app.router.add_get(f"{base}/workflowExecutions/{{execution_id}}", self._get_execution)
        app.router.add_put(f"{base}/workflowExecutions/{{execution_id}}", self._cancel_execution)
        app.router.add_get(f"{base}/workflowExecutions/{{execution_id}}/downloadUrls", self._download_urls)
        app.router.add_post(f"{base}/workflows", self._create_workflow)
        app.router.add_route("*", f"{base}/workflows/{{workflow_id}}", self._workflow)
        app.router.add_get("/results/{execution_id}/{part}", self._download_file)
        app.router.add_post("/_sandbox/instances/{instance_id}", self._admin_instance)
        app.router.add_post("/_sandbox/settings", self._admin_settings)

    # --- calls ---------------------------------------------------------------------------------------

    def _authenticate(
        self, request: web.Request, *, needs_account: bool = True
    ) -> tuple[str | None, web.Response | None]:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip()
        user = self.lwa.holder(token)
        if user is None:
            return None, json_response({"code": "401", "details": "Authentication failed"}, 401)
        if request.headers.get("Amazon-Advertising-API-ClientId") != self.lwa.client_id:
            return user, json_response({"code": "401", "details": "Invalid client id header"}, 401)
        if needs_account:
            for name in ("Amazon-Advertising-API-AdvertiserId", "Amazon-Advertising-API-MarketplaceId"):
                if not request.headers.get(name):
                    return user, json_response({"code": "400", "details": f"Missing header {name}"}, 400)
        return user, None

    async def _enter(
        self, request: web.Request, route: str, *, needs_account: bool = True
    ) -> tuple[str | None, web.StreamResponse | None]:
        """Authenticate, count, and apply a scripted fault if one is due for this call."""
        instance = request.match_info.get("instance_id")
        user, denied = self._authenticate(request, needs_account=needs_account)
        self.faults.count(route, user, instance, request)
        fault = self.faults.take(route, user, instance)
        if fault is not None and fault.delay_seconds is not None:
            await asyncio.sleep(fault.delay_seconds)
            if fault == Fault(delay_seconds=fault.delay_seconds):
                fault = None  # only slow: the call goes on as usual
        if fault is not None and fault.create_anyway:
            request[_DEFERRED_FAULT] = fault
        elif fault is not None:
            return user, await play(request, fault)
        if denied is not None:
            return user, denied
        return user, None

    async def _accounts(self, request: web.Request) -> web.StreamResponse:
        user, early = await self._enter(request, "accounts", needs_account=False)
        if early is not None:
            return early
        seen: dict[str, dict[str, str]] = {}
        for instance_id in self.accounts_of.get(user or "", []):
            instance = self.instances[instance_id]
            seen.setdefault(
                instance.account_id,
                {
                    "accountId": instance.account_id,
                    "accountName": f"{instance.name} account",
                    "marketplaceId": instance.marketplace_id,
                },
            )
        return json_response({"amcAccounts": list(seen.values())}, 200)

    async def _instances(self, request: web.Request) -> web.StreamResponse:
        user, early = await self._enter(request, "instances")
        if early is not None:
            return early
        account = request.headers.get("Amazon-Advertising-API-AdvertiserId")
        found = []
        for instance_id in self.accounts_of.get(user or "", []):
            instance = self.instances[instance_id]
            if instance.account_id != account:
                continue
            found.append(
                {
                    "instanceId": instance.instance_id,
                    "instanceName": instance.name,
                    "instanceType": "STANDARD",
                    "creationStatus": "COMPLETED",
                    "apiEndpoint": instance.api_endpoint or self.base_url,
                    "entities": [{"entityId": instance.account_id, "marketplaceId": instance.marketplace_id}],
                    "s3BucketName": f"amc-{instance.instance_id}",
                }
            )
        return json_response({"instances": found}, 200)

    def _view(self, execution: SimExecution, include_workflow: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        status = execution.status(now)
        zone = ZoneInfo(execution.window_timezone or "UTC")
        view: dict[str, Any] = {
            "workflowExecutionId": execution.execution_id,
            "workflowId": execution.workflow_id,
            "executionCategory": "AD_HOC",
            "status": status,
            "createTime": _utc_text(execution.create_time),
            "lastUpdatedTime": _utc_text(datetime.now(UTC)),
            "expireTime": _utc_text(execution.expire_time),
            "timeWindowStart": _utc_text(datetime.strptime(execution.window_start, _TIME_FORMAT).replace(tzinfo=zone))
            if execution.window_start
            else None,
            "timeWindowEnd": _utc_text(datetime.strptime(execution.window_end, _TIME_FORMAT).replace(tzinfo=zone))
            if execution.window_end
            else None,
            "timeWindowStartOriginal": execution.window_start,
            "timeWindowEndOriginal": execution.window_end,
            "timeWindowTimeZoneOriginal": execution.window_timezone,
            "parameterValues": execution.parameter_values,
            "dataGaps": [],
            "ignoreDataGaps": False,
            "disableAggregationControls": False,
            "workflowExecutionTimeoutSeconds": execution.timeout_seconds,
            "outputS3URI": "N/A",
            "outputColumns": [
                {"name": name, "dataType": data_type, "columnType": column_type}
                for name, data_type, column_type in RESULT_SCHEMA
            ],
        }
        if status in ("RUNNING", "SUCCEEDED", "FAILED"):
            view["executionTime"] = int(now - execution.created_monotonic)
        if status == "FAILED":
            view["statusReason"] = execution.profile.fail_reason
        if execution.profile.download_unavailable:
            view["outputChannels"] = [
                {"type": "DOWNLOAD", "status": "UNAVAILABLE", "statusReason": execution.profile.download_unavailable}
            ]
        if include_workflow and execution.sql_query is not None:
            view["sqlQuery"] = execution.sql_query
        return view

    def _quota_refusal(self, instance_id: str) -> web.Response | None:
        if self.adhoc_quota is None:
            return None
        now = time.time()
        recent = self.submissions.setdefault(instance_id, deque())
        while recent and recent[0] <= now - self.quota_window_seconds:
            recent.popleft()
        if len(recent) < self.adhoc_quota:
            recent.append(now)
            return None
        self.faults.calls["quota_refusal"] += 1
        return json_response(
            {
                "code": str(self.quota_refusal_status),
                "details": f"Ad hoc workflow execution quota exceeded: {self.adhoc_quota} executions per 24 hours "
                f"for instance {instance_id}",
            },
            self.quota_refusal_status,
        )

    async def _create_execution(self, request: web.Request) -> web.StreamResponse:
        instance_id = request.match_info["instance_id"]
        _, early = await self._enter(request, "create_execution")
        if early is not None:
            return early
        # A create_anyway fault is applied only after the execution exists.
        fault = request.get(_DEFERRED_FAULT)
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return json_response({"code": "400", "details": "Malformed JSON body"}, 400)
        problem, execution = self._validate_create(instance_id, body)
        if problem is not None:
            return json_response({"code": "400", "details": problem}, 400)
        assert execution is not None
        refusal = self._quota_refusal(instance_id)
        if refusal is not None:
            return refusal
        self.executions[execution.execution_id] = execution
        if fault is not None:
            return await play(request, fault)
        return json_response(self._view(execution), 200)

    def _validate_create(self, instance_id: str, body: Any) -> tuple[str | None, SimExecution | None]:
        if not isinstance(body, dict):
            return "The body must be a JSON object", None
        if "outputFormat" in body:
            return "Unrecognized field outputFormat", None
        workflow_id = body.get("workflowId")
        workflow = body.get("workflow")
        if (workflow_id is None) == (workflow is None):
            return "Exactly one of workflowId and workflow must be given", None
        sql: str | None = None
        if workflow is not None:
            sql = workflow.get("sqlQuery") if isinstance(workflow, dict) else None
            if not isinstance(sql, str) or not sql.strip():
                return "workflow.sqlQuery must be a non-empty string", None
            sent_id = workflow.get("workflowId")
            if self.unconfirmed.echoes_adhoc_workflow_id and isinstance(sent_id, str) and sent_id:
                workflow_id = sent_id
            else:
                workflow_id = f"adhoc-{uuid.uuid4().hex[:12]}"
            if not self.unconfirmed.keeps_sql_comments:
                sql = _LINE_COMMENT.sub("", sql).strip()
        else:
            saved = self.workflows.get((instance_id, str(workflow_id)))
            if saved is None:
                return f"Workflow {workflow_id} does not exist on instance {instance_id}", None
            sql = saved["sqlQuery"]
        parameters = body.get("parameterValues") or {}
        if not isinstance(parameters, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in parameters.items()
        ):
            return "parameterValues must map strings to strings", None
        window_type = body.get("timeWindowType", "EXPLICIT")
        start = end = zone = None
        if window_type == "EXPLICIT":
            start, end, zone = body.get("timeWindowStart"), body.get("timeWindowEnd"), body.get("timeWindowTimeZone")
            if not (_STRICT_TIME.match(str(start)) and _STRICT_TIME.match(str(end))):
                return "timeWindowStart and timeWindowEnd must be yyyy-MM-ddTHH:mm:ss", None
            start_at = datetime.strptime(str(start), _TIME_FORMAT)
            end_at = datetime.strptime(str(end), _TIME_FORMAT)
            try:
                ZoneInfo(str(zone))
            except (ZoneInfoNotFoundError, ValueError):
                return f"timeWindowTimeZone {zone!r} is not a known time zone", None
            if end_at <= start_at:
                return "timeWindowEnd must be after timeWindowStart", None
            profile = self.profile(instance_id)
            if start_at < datetime.now() - timedelta(days=profile.retention_days):
                return (
                    "The provided timeWindowStart is before our stated retention period "
                    f"of {profile.retention_days} days",
                    None,
                )
        elif window_type not in ("MOST_RECENT_DAY", "MOST_RECENT_WEEK", "CURRENT_MONTH", "PREVIOUS_MONTH", "ALL"):
            return f"Unknown timeWindowType {window_type}", None
        created = datetime.now(UTC)
        execution = SimExecution(
            execution_id=str(uuid.uuid4()),
            instance_id=instance_id,
            workflow_id=str(workflow_id),
            sql_query=sql,
            parameter_values=parameters,
            window_start=start,
            window_end=end,
            window_timezone=zone,
            created_monotonic=time.monotonic(),
            create_time=created,
            expire_time=created + timedelta(seconds=self.result_ttl_seconds),
            profile=InstanceProfile(**self.profile(instance_id).__dict__),
            timeout_seconds=int(body.get("workflowExecutionTimeoutSeconds") or 21_600),
        )
        return None, execution

    async def _get_execution(self, request: web.Request) -> web.StreamResponse:
        _, early = await self._enter(request, "get_execution")
        if early is not None:
            return early
        execution = self._find(request)
        if execution is None:
            return json_response({"code": "404", "details": "Execution not found"}, 404)
        include = request.query.get("includeWorkflow", "false").lower() == "true"
        return json_response(self._view(execution, include), 200)

    def _find(self, request: web.Request) -> SimExecution | None:
        execution = self.executions.get(request.match_info["execution_id"])
        if execution is None or execution.instance_id != request.match_info["instance_id"]:
            return None
        return execution

    async def _list_executions(self, request: web.Request) -> web.StreamResponse:
        _, early = await self._enter(request, "list_executions")
        if early is not None:
            return early
        instance_id = request.match_info["instance_id"]
        query = request.query
        if "workflowId" not in query and "minCreationTime" not in query:
            return json_response({"code": "400", "details": "Must provide either workflowId or minCreationTime"}, 400)
        visible_after = time.monotonic() - self.unconfirmed.listing_lag_seconds
        matching = [
            e for e in self.executions.values() if e.instance_id == instance_id and e.created_monotonic <= visible_after
        ]
        try:
            zone = ZoneInfo(query.get("timeZone", "UTC"))
        except (ZoneInfoNotFoundError, ValueError):
            return json_response({"code": "400", "details": f"Unknown timeZone {query.get('timeZone')!r}"}, 400)
        bounds: tuple[tuple[str, Callable[[SimExecution, datetime], bool]], ...] = (
            ("minCreationTime", lambda e, t: e.create_time >= t),
            ("maxCreationTime", lambda e, t: e.create_time <= t),
        )
        for key, keep in bounds:
            if key in query:
                if not _STRICT_TIME.match(query[key]):
                    # What a public client got for a value with a Z and a fraction.
                    return json_response(
                        {"code": "400", "details": "Must provide either workflowId or minCreationTime"}, 400
                    )
                bound = datetime.strptime(query[key], _TIME_FORMAT).replace(tzinfo=zone)
                matching = [e for e in matching if keep(e, bound)]
        if "workflowId" in query:
            matching = [e for e in matching if e.workflow_id == query["workflowId"]]
        matching.sort(key=lambda e: e.create_time)
        offset = int(query.get("nextToken", "0") or 0)
        page = matching[offset : offset + self.list_page_size]
        next_token = str(offset + self.list_page_size) if offset + self.list_page_size < len(matching) else None
        include = query.get("includeWorkflow", "false").lower() == "true" and self.unconfirmed.list_includes_sql
        body: dict[str, Any] = {"executions": [self._view(e, include) for e in page]}
        if next_token:
            body["nextToken"] = next_token
        return json_response(body, 200)

    async def _cancel_execution(self, request: web.Request) -> web.StreamResponse:
        _, early = await self._enter(request, "cancel_execution")
        if early is not None:
            return early
        execution = self._find(request)
        if execution is None:
            return json_response({"code": "404", "details": "Execution not found"}, 404)
        body = await request.json()
        if body.get("status") != "CANCELLED":
            return json_response({"code": "400", "details": "Only status CANCELLED may be set"}, 400)
        if execution.status(time.monotonic()) in TERMINAL:
            return json_response({"code": "400", "details": "The execution is already in a terminal state"}, 400)
        execution.cancelled_at = datetime.now(UTC)
        return json_response({}, 200)  # an empty object: GET afterwards

    def _sign(self, execution_id: str, part: int, expires: float) -> str:
        message = f"{execution_id}/{part}/{expires:.3f}".encode()
        return hmac.new(self._signing_key, message, hashlib.sha256).hexdigest()[:32]

    async def _download_urls(self, request: web.Request) -> web.StreamResponse:
        _, early = await self._enter(request, "download_urls")
        if early is not None:
            return early
        execution = self._find(request)
        if execution is None:
            return json_response({"code": "404", "details": "Execution not found"}, 404)
        status = execution.status(time.monotonic())
        if status != "SUCCEEDED":
            return json_response({"code": "400", "details": f"Execution is {status}; no results"}, 400)
        if datetime.now(UTC) >= execution.expire_time:
            return json_response({"code": "400", "details": "The results of this execution have expired"}, 400)
        expires = time.time() + self.link_ttl_seconds
        urls = [
            f"{self.base_url}/results/{execution.execution_id}/{part}"
            f"?X-Amz-Expires={expires:.3f}&X-Amz-Signature={self._sign(execution.execution_id, part, expires)}"
            for part in range(execution.profile.files)
        ]
        offset = int(request.query.get("nextToken", "0") or 0)
        page = urls[offset : offset + self.url_page_size]
        next_token = str(offset + self.url_page_size) if offset + self.url_page_size < len(urls) else None
        body: dict[str, Any] = {"downloadUrls": page, "metadataDownloadUrls": []}
        if next_token:
            body["nextToken"] = next_token
        return json_response(body, 200)

    async def _download_file(self, request: web.Request) -> web.StreamResponse:
        execution = self.executions.get(request.match_info["execution_id"])
        instance = execution.instance_id if execution else None
        self.faults.count("download_file", None, instance)
        part = int(request.match_info["part"])
        try:
            expires = float(request.query["X-Amz-Expires"])
            signature = request.query["X-Amz-Signature"]
        except (KeyError, ValueError):
            return _access_denied("Query-string authentication requires the Signature and Expires parameters")
        if execution is None or not hmac.compare_digest(signature, self._sign(execution.execution_id, part, expires)):
            return _access_denied("The request signature we calculated does not match the signature you provided")
        if time.time() > expires:
            return _access_denied("Request has expired")
        fault = self.faults.take("download_file", None, instance)
        if fault is not None and not fault.truncate:
            return await play(request, fault)
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/csv"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        rows = list(part_bounds(execution.profile.rows, execution.profile.files))[part]
        header = part == 0 or self.unconfirmed.header_in_every_part
        for sent, chunk in enumerate(generate_csv(execution, rows[0], rows[1], header=header), start=1):
            await response.write(chunk)
            if fault is not None and fault.truncate and sent >= 2:
                # Half a file, then the connection closes: the client must notice and fetch it again.
                if request.transport is not None:
                    request.transport.close()
                return response
        await response.write_eof()
        return response

    # --- saved workflows -----------------------------------------------------------------------------

    async def _create_workflow(self, request: web.Request) -> web.StreamResponse:
        _, early = await self._enter(request, "workflows")
        if early is not None:
            return early
        body = await request.json()
        workflow_id, sql = body.get("workflowId"), body.get("sqlQuery")
        if not isinstance(workflow_id, str) or not isinstance(sql, str):
            return json_response({"code": "400", "details": "workflowId and sqlQuery are required"}, 400)
        self.add_workflow(request.match_info["instance_id"], workflow_id, sql)
        return json_response({"workflowId": workflow_id}, 200)

    async def _workflow(self, request: web.Request) -> web.StreamResponse:
        _, early = await self._enter(request, "workflows")
        if early is not None:
            return early
        key = (request.match_info["instance_id"], request.match_info["workflow_id"])
        if key not in self.workflows:
            return json_response({"code": "404", "details": "Workflow not found"}, 404)
        if request.method == "DELETE":
            del self.workflows[key]
            return json_response({}, 200)
        if request.method == "PUT":
            body = await request.json()
            self.workflows[key]["sqlQuery"] = body.get("sqlQuery", self.workflows[key]["sqlQuery"])
        return json_response(self.workflows[key], 200)

    # --- scripting over HTTP, for `recomamp sandbox` ------------------------------------------------

    async def _admin_instance(self, request: web.Request) -> web.StreamResponse:
        profile = self.profile(request.match_info["instance_id"])
        for key, value in (await request.json()).items():
            if not hasattr(profile, key):
                return json_response({"error": f"unknown profile field {key}"}, 400)
            setattr(profile, key, value)
        return json_response(profile.__dict__, 200)

    async def _admin_settings(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        for key, value in body.items():
            if hasattr(self.unconfirmed, key):
                setattr(self.unconfirmed, key, value)
            elif key in ("adhoc_quota", "quota_window_seconds", "quota_refusal_status", "result_ttl_seconds"):
                setattr(self, key, value)
            else:
                return json_response({"error": f"unknown setting {key}"}, 400)
        return json_response({**self.unconfirmed.__dict__, "adhoc_quota": self.adhoc_quota}, 200)


def _access_denied(message: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
        f"<Message>{message}</Message><RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    )
    return web.Response(status=403, text=body, content_type="application/xml")
