"""A faithful simulator of Login with Amazon and the AMC reporting API, over real HTTP (aiohttp).

It follows ../shared/AMC_API.md: the token endpoint and its errors, the four AMC headers, flat execution
objects with the PENDING → RUNNING → SUCCEEDED | FAILED | CANCELLED lifecycle (durations configurable),
results split into several CSV files behind download links that expire (403 AccessDenied XML), and 401
for an expired access token. Tests script faults per route, per user and per instance, and read how many
calls each route received. `recomamp sandbox` serves it; its `/_sandbox/*` routes script it from outside.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

Route = Literal[
    "lwa_token",
    "create_execution",
    "get_execution",
    "list_executions",
    "cancel_execution",
    "download_urls",
    "download_file",
    "workflows",
]
ROUTES: tuple[str, ...] = Route.__args__  # type: ignore[attr-defined]

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "REJECTED"})
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, used once."""

    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hang_seconds: float | None = None  # answer only after this long: the client times out first
    drop: bool = False  # close the connection without an answer
    create_anyway: bool = False  # create_execution: create it, then answer with the fault
    truncate: bool = False  # download_file: send part of the body, then close

    @classmethod
    def http(cls, status: int, body: Any = None, **headers: str) -> Fault:
        return cls(status=status, body=body, headers=headers)

    @classmethod
    def invalid_grant(cls) -> Fault:
        return cls.http(
            400,
            {
                "error": "invalid_grant",
                "error_description": "The request has an invalid grant parameter : refresh_token. "
                "User may have revoked or didn't grant the permission.",
            },
        )

    @classmethod
    def invalid_client(cls) -> Fault:
        return cls.http(401, {"error": "invalid_client", "error_description": "Client authentication failed"})

    @classmethod
    def throttled(cls, retry_after: float | None = None) -> Fault:
        headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else {}
        return cls(status=429, body={"code": "429", "details": "Too Many Requests"}, headers=headers)

    @classmethod
    def hang(cls, seconds: float = 30.0) -> Fault:
        return cls(hang_seconds=seconds)

    @classmethod
    def dropped(cls) -> Fault:
        return cls(drop=True)

    @classmethod
    def created_but_504(cls) -> Fault:
        return cls(status=504, body={"message": "Endpoint request timed out"}, create_anyway=True)

    @classmethod
    def truncated(cls) -> Fault:
        return cls(truncate=True)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        return cls(**data)


_DEFERRED_FAULT = web.RequestKey("deferred_fault", Fault)


@dataclass
class InstanceProfile:
    """How executions on one AMC instance behave."""

    rows: int = 120
    files: int = 3
    pending_seconds: float = 0.0
    running_seconds: float = 0.0
    fail_reason: str | None = None  # executions end FAILED with this statusReason
    retention_days: int = 400
    restatement: int = 0  # bump to change the values (not the keys) of a re-run: AMC restates data


@dataclass
class SimExecution:
    execution_id: str
    instance_id: str
    workflow_id: str
    sql_query: str | None
    parameter_values: dict[str, str]
    window_start: str | None
    window_end: str | None
    window_timezone: str | None
    created_monotonic: float
    create_time: datetime
    profile: InstanceProfile
    cancelled_at: datetime | None = None

    def status(self, now: float) -> str:
        if self.cancelled_at is not None:
            return "CANCELLED"
        elapsed = now - self.created_monotonic
        if elapsed < self.profile.pending_seconds:
            return "PENDING"
        if elapsed < self.profile.pending_seconds + self.profile.running_seconds:
            return "RUNNING"
        return "FAILED" if self.profile.fail_reason else "SUCCEEDED"


class AmcSimulator:
    def __init__(
        self,
        *,
        client_id: str = "amzn1.application-oa2-client.sandbox",
        client_secret: str = "sandbox-client-secret",
        access_token_ttl_seconds: int = 3600,
        link_ttl_seconds: float = 600.0,
        list_page_size: int = 25,
        url_page_size: int = 25,
        rotate_refresh_tokens: bool = False,
        return_refresh_token: bool = True,
        default_profile: InstanceProfile | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_token_ttl_seconds = access_token_ttl_seconds
        self.link_ttl_seconds = link_ttl_seconds
        self.list_page_size = list_page_size
        self.url_page_size = url_page_size
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.return_refresh_token = return_refresh_token  # LWA may leave it out of a refresh answer
        self.default_profile = default_profile or InstanceProfile()
        self.profiles: dict[str, InstanceProfile] = {}
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> user email, while it is valid
        self._issued_to: dict[str, str] = {}  # every refresh token ever issued -> email, to count calls
        self.access_tokens: dict[str, tuple[str, float]] = {}  # access token -> (email, expires, monotonic)
        self.executions: dict[str, SimExecution] = {}
        self.workflows: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.calls_by_user: Counter[tuple[str, str]] = Counter()
        self.calls_by_instance: Counter[tuple[str, str]] = Counter()
        self._faults: dict[tuple[str, str | None, str | None], deque[Fault]] = {}
        self._signing_key = secrets.token_bytes(32)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # --- scripting, from Python ----------------------------------------------------------------------

    def add_user(self, email: str, refresh_token: str | None = None) -> str:
        token = refresh_token or f"Atzr|sim-{secrets.token_urlsafe(48)}"
        self.refresh_tokens[token] = email
        self._issued_to[token] = email
        return token

    def revoke(self, email: str) -> None:
        """The user revoked recomamp's access at Amazon: their refresh and access tokens stop working."""
        self.refresh_tokens = {t: e for t, e in self.refresh_tokens.items() if e != email}
        self.access_tokens = {t: v for t, v in self.access_tokens.items() if v[0] != email}

    def expire_access_tokens(self, email: str | None = None) -> None:
        self.access_tokens = {t: v for t, v in self.access_tokens.items() if email is not None and v[0] != email}

    def profile(self, instance_id: str) -> InstanceProfile:
        return self.profiles.setdefault(instance_id, InstanceProfile(**self.default_profile.__dict__))

    def add_workflow(self, instance_id: str, workflow_id: str, sql_query: str) -> None:
        self.workflows[(instance_id, workflow_id)] = {"workflowId": workflow_id, "sqlQuery": sql_query}

    def add_faults(
        self, route: Route | str, *faults: Fault, user: str | None = None, instance: str | None = None
    ) -> None:
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; routes: {', '.join(ROUTES)}")
        self._faults.setdefault((route, user, instance), deque()).extend(faults)

    def pending_faults(self) -> int:
        return sum(len(queue) for queue in self._faults.values())

    def executions_for(self, instance_id: str) -> list[SimExecution]:
        return [e for e in self.executions.values() if e.instance_id == instance_id]

    # --- serving -------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/auth/o2/token", self._token)
        base = "/amc/reporting/{instance_id}"
        app.router.add_post(f"{base}/workflowExecutions", self._create_execution)
        app.router.add_get(f"{base}/workflowExecutions", self._list_executions)
        app.router.add_get(f"{base}/workflowExecutions/{{execution_id}}", self._get_execution)
        app.router.add_put(f"{base}/workflowExecutions/{{execution_id}}", self._cancel_execution)
        app.router.add_get(f"{base}/workflowExecutions/{{execution_id}}/downloadUrls", self._download_urls)
        app.router.add_post(f"{base}/workflows", self._create_workflow)
        app.router.add_route("*", f"{base}/workflows/{{workflow_id}}", self._workflow)
        app.router.add_get("/results/{execution_id}/{part}", self._download_file)
        app.router.add_post("/_sandbox/users", self._admin_users)
        app.router.add_post("/_sandbox/faults", self._admin_faults)
        app.router.add_post("/_sandbox/instances/{instance_id}", self._admin_instance)
        app.router.add_get("/_sandbox/calls", self._admin_calls)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        bound_port = server.sockets[0].getsockname()[1]
        self.base_url = f"http://{host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        url = await self.start(host, port)
        try:
            yield url
        finally:
            await self.stop()

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/auth/o2/token"

    # --- fault machinery -----------------------------------------------------------------------------

    def _count(self, route: str, user: str | None, instance: str | None) -> None:
        self.calls[route] += 1
        if user:
            self.calls_by_user[(route, user)] += 1
        if instance:
            self.calls_by_instance[(route, instance)] += 1

    def _take_fault(self, route: str, user: str | None, instance: str | None) -> Fault | None:
        for key in ((route, user, instance), (route, user, None), (route, None, instance), (route, None, None)):
            queue = self._faults.get(key)
            if queue:
                return queue.popleft()
        return None

    async def _apply(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        if fault.hang_seconds is not None:
            await asyncio.sleep(fault.hang_seconds)
        if fault.drop:
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError  # the connection is gone: nothing is sent
        return _json_response(fault.body if fault.body is not None else {}, fault.status or 500, fault.headers)

    # --- Login with Amazon ---------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        refresh_token = str(form.get("refresh_token", ""))
        user = self.refresh_tokens.get(refresh_token)
        caller = self._issued_to.get(refresh_token)  # a revoked token's calls still count as its user's
        self._count("lwa_token", caller, None)
        fault = self._take_fault("lwa_token", caller, None)
        if fault is not None and (fault.status is not None or fault.hang_seconds or fault.drop):
            return await self._apply(request, fault)
        if form.get("grant_type") != "refresh_token":
            return _json_response({"error": "unsupported_grant_type", "error_description": "Unsupported"}, 400)
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return _json_response({"error": "invalid_client", "error_description": "Client authentication failed"}, 401)
        if not refresh_token:
            return _json_response(
                {"error": "invalid_request", "error_description": "The request is missing a required parameter"},
                400,
            )
        if user is None:
            return await self._apply(request, Fault.invalid_grant())
        access = f"Atza|sim-{secrets.token_urlsafe(300)}"
        self.access_tokens[access] = (user, time.monotonic() + self.access_token_ttl_seconds)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": self.access_token_ttl_seconds,
        }
        if self.rotate_refresh_tokens:
            del self.refresh_tokens[refresh_token]
            body["refresh_token"] = self.add_user(user)
        elif self.return_refresh_token:
            body["refresh_token"] = refresh_token
        return _json_response(body, 200)

    # --- AMC -----------------------------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip()
        entry = self.access_tokens.get(token)
        if entry is None or entry[1] < time.monotonic():
            return None, _json_response({"code": "401", "details": "Authentication failed"}, 401)
        if request.headers.get("Amazon-Advertising-API-ClientId") != self.client_id:
            return entry[0], _json_response({"code": "401", "details": "Invalid client id header"}, 401)
        for name in ("Amazon-Advertising-API-AdvertiserId", "Amazon-Advertising-API-MarketplaceId"):
            if not request.headers.get(name):
                return entry[0], _json_response({"code": "400", "details": f"Missing header {name}"}, 400)
        return entry[0], None

    async def _enter(self, request: web.Request, route: str) -> tuple[str | None, web.StreamResponse | None]:
        """Authenticate, count, and apply a scripted fault if one is due for this call."""
        instance = request.match_info.get("instance_id")
        user, denied = self._authenticate(request)
        self._count(route, user, instance)
        fault = self._take_fault(route, user, instance)
        if fault is not None and fault.create_anyway:
            request[_DEFERRED_FAULT] = fault
        elif fault is not None:
            return user, await self._apply(request, fault)
        if denied is not None:
            return user, denied
        return user, None

    def _view(self, execution: SimExecution, include_workflow: bool = False) -> dict[str, Any]:
        status = execution.status(time.monotonic())
        view: dict[str, Any] = {
            "workflowExecutionId": execution.execution_id,
            "workflowId": execution.workflow_id,
            "status": status,
            "createTime": execution.create_time.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "lastUpdatedTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "timeWindowStart": execution.window_start,
            "timeWindowEnd": execution.window_end,
            "timeWindowTimeZone": execution.window_timezone,
            "parameterValues": execution.parameter_values,
            "outputS3URI": f"s3://amc-sim-results/{execution.instance_id}/{execution.execution_id}/",
        }
        if status == "FAILED":
            view["statusReason"] = execution.profile.fail_reason
        if status == "SUCCEEDED":
            view["expireTime"] = (execution.create_time + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        if include_workflow:
            view["workflow"] = {"workflowId": execution.workflow_id, "sqlQuery": execution.sql_query}
        return view

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
            return _json_response({"code": "400", "details": "Malformed JSON body"}, 400)
        problem, execution = self._validate_create(instance_id, body)
        if problem is not None:
            return _json_response({"code": "400", "details": problem}, 400)
        assert execution is not None
        self.executions[execution.execution_id] = execution
        if fault is not None:
            return await self._apply(request, fault)
        return _json_response(self._view(execution), 200)

    def _validate_create(self, instance_id: str, body: Any) -> tuple[str | None, SimExecution | None]:
        if not isinstance(body, dict):
            return "The body must be a JSON object", None
        workflow_id = body.get("workflowId")
        workflow = body.get("workflow")
        if (workflow_id is None) == (workflow is None):
            return "Exactly one of workflowId and workflow must be given", None
        sql: str | None = None
        if workflow is not None:
            sql = workflow.get("sqlQuery") if isinstance(workflow, dict) else None
            if not isinstance(sql, str) or not sql.strip():
                return "workflow.sqlQuery must be a non-empty string", None
            workflow_id = f"adhoc-{uuid.uuid4().hex[:12]}"
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
            try:
                start_at = datetime.strptime(str(start), _TIME_FORMAT)
                end_at = datetime.strptime(str(end), _TIME_FORMAT)
            except ValueError:
                return "timeWindowStart and timeWindowEnd must be yyyy-MM-ddTHH:mm:ss", None
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
            create_time=datetime.now(UTC),
            profile=InstanceProfile(**self.profile(instance_id).__dict__),
        )
        return None, execution

    async def _get_execution(self, request: web.Request) -> web.StreamResponse:
        _, early = await self._enter(request, "get_execution")
        if early is not None:
            return early
        execution = self._find(request)
        if execution is None:
            return _json_response({"code": "404", "details": "Execution not found"}, 404)
        return _json_response(self._view(execution), 200)

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
        matching = [e for e in self.executions.values() if e.instance_id == instance_id]
        if "minCreationTime" in query:
            try:
                since = datetime.fromisoformat(query["minCreationTime"].replace("Z", "+00:00"))
            except ValueError:
                return _json_response({"code": "400", "details": "minCreationTime must be ISO 8601"}, 400)
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
            matching = [e for e in matching if e.create_time >= since]
        if "workflowId" in query:
            matching = [e for e in matching if e.workflow_id == query["workflowId"]]
        matching.sort(key=lambda e: e.create_time)
        limit = min(int(query.get("limit", self.list_page_size)), self.list_page_size)
        offset = int(query.get("nextToken", "0") or 0)
        page = matching[offset : offset + limit]
        next_token = str(offset + limit) if offset + limit < len(matching) else None
        include = query.get("includeWorkflow", "false").lower() == "true"
        return _json_response({"executions": [self._view(e, include) for e in page], "nextToken": next_token}, 200)

    async def _cancel_execution(self, request: web.Request) -> web.StreamResponse:
        _, early = await self._enter(request, "cancel_execution")
        if early is not None:
            return early
        execution = self._find(request)
        if execution is None:
            return _json_response({"code": "404", "details": "Execution not found"}, 404)
        body = await request.json()
        if body.get("status") != "CANCELLED":
            return _json_response({"code": "400", "details": "Only status CANCELLED may be set"}, 400)
        if execution.status(time.monotonic()) in TERMINAL:
            return _json_response({"code": "400", "details": "The execution is already in a terminal state"}, 400)
        execution.cancelled_at = datetime.now(UTC)
        return _json_response(self._view(execution), 200)

    def _sign(self, execution_id: str, part: int, expires: float) -> str:
        message = f"{execution_id}/{part}/{expires:.3f}".encode()
        return hmac.new(self._signing_key, message, hashlib.sha256).hexdigest()[:32]

    async def _download_urls(self, request: web.Request) -> web.StreamResponse:
        _, early = await self._enter(request, "download_urls")
        if early is not None:
            return early
        execution = self._find(request)
        if execution is None:
            return _json_response({"code": "404", "details": "Execution not found"}, 404)
        status = execution.status(time.monotonic())
        if status != "SUCCEEDED":
            return _json_response({"code": "400", "details": f"Execution is {status}; no results"}, 400)
        expires = time.time() + self.link_ttl_seconds
        urls = [
            f"{self.base_url}/results/{execution.execution_id}/{part}"
            f"?X-Amz-Expires={expires:.3f}&X-Amz-Signature={self._sign(execution.execution_id, part, expires)}"
            for part in range(execution.profile.files)
        ]
        offset = int(request.query.get("nextToken", "0") or 0)
        page = urls[offset : offset + self.url_page_size]
        next_token = str(offset + self.url_page_size) if offset + self.url_page_size < len(urls) else None
        return _json_response({"downloadUrls": page, "metadataDownloadUrls": [], "nextToken": next_token}, 200)

    async def _download_file(self, request: web.Request) -> web.StreamResponse:
        execution = self.executions.get(request.match_info["execution_id"])
        instance = execution.instance_id if execution else None
        self._count("download_file", None, instance)
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
        fault = self._take_fault("download_file", None, instance)
        if fault is not None and not fault.truncate:
            return await self._apply(request, fault)
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/csv"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        rows = list(_part_bounds(execution.profile.rows, execution.profile.files))[part]
        for sent, chunk in enumerate(generate_csv(execution, rows[0], rows[1], header=True), start=1):
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
            return _json_response({"code": "400", "details": "workflowId and sqlQuery are required"}, 400)
        self.add_workflow(request.match_info["instance_id"], workflow_id, sql)
        return _json_response({"workflowId": workflow_id}, 200)

    async def _workflow(self, request: web.Request) -> web.StreamResponse:
        _, early = await self._enter(request, "workflows")
        if early is not None:
            return early
        key = (request.match_info["instance_id"], request.match_info["workflow_id"])
        if key not in self.workflows:
            return _json_response({"code": "404", "details": "Workflow not found"}, 404)
        if request.method == "DELETE":
            del self.workflows[key]
            return _json_response({}, 200)
        if request.method == "PUT":
            body = await request.json()
            self.workflows[key]["sqlQuery"] = body.get("sqlQuery", self.workflows[key]["sqlQuery"])
        return _json_response(self.workflows[key], 200)

    # --- scripting over HTTP, for `recomamp sandbox` ------------------------------------------------

    async def _admin_users(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        token = self.add_user(body["email"], body.get("refresh_token"))
        return _json_response({"refresh_token": token}, 200)

    async def _admin_faults(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        faults = [Fault.from_json(item) for item in body["faults"]]
        self.add_faults(body["route"], *faults, user=body.get("user"), instance=body.get("instance"))
        return _json_response({"pending": self.pending_faults()}, 200)

    async def _admin_instance(self, request: web.Request) -> web.StreamResponse:
        profile = self.profile(request.match_info["instance_id"])
        for key, value in (await request.json()).items():
            if not hasattr(profile, key):
                return _json_response({"error": f"unknown profile field {key}"}, 400)
            setattr(profile, key, value)
        return _json_response(profile.__dict__, 200)

    async def _admin_calls(self, _: web.Request) -> web.StreamResponse:
        return _json_response(dict(self.calls), 200)


def _json_response(body: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=body if isinstance(body, str) else json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def _access_denied(message: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
        f"<Message>{message}</Message><RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    )
    return web.Response(status=403, text=body, content_type="application/xml")


def _part_bounds(rows: int, files: int) -> Iterator[tuple[int, int]]:
    files = max(1, files)
    size, extra = divmod(rows, files)
    start = 0
    for index in range(files):
        end = start + size + (1 if index < extra else 0)
        yield start, end
        start = end


# Ten columns of the types a loader must infer: date, integers, text (with commas and quotes),
# a decimal, a float, a boolean and a timestamp.
RESULT_COLUMNS = (
    "event_date",
    "campaign_id",
    "campaign_name",
    "impressions",
    "clicks",
    "spend",
    "ctr",
    "is_branded",
    "first_seen_at",
    "audience",
)
_AUDIENCES = ("in-market", "lifestyle", 'say "hi", then buy', "")


def _window_days(execution: SimExecution) -> tuple[date, int]:
    if execution.window_start and execution.window_end:
        start = datetime.strptime(execution.window_start, _TIME_FORMAT).date()
        end = datetime.strptime(execution.window_end, _TIME_FORMAT).date()
        return start, max(1, (end - start).days)
    return date(2026, 1, 1), 1


def result_row(execution: SimExecution, index: int) -> tuple[str, ...]:
    """Row `index` of an execution's result. Keys (event_date, campaign_id) depend only on the window."""
    first_day, days = _window_days(execution)
    day = first_day + timedelta(days=index % days)
    campaign = 1000 + index // days
    seed = index * 7919 + execution.profile.restatement * 104729
    impressions = 1000 + seed % 50_000
    clicks = seed % 997
    return (
        day.isoformat(),
        str(campaign),
        f"Campaign {campaign}, {'brand' if campaign % 2 else 'generic'}",
        str(impressions),
        str(clicks),
        f"{(seed % 100_000) / 100:.2f}",
        repr(round(clicks / impressions, 6)),
        "true" if campaign % 3 == 0 else "false",
        f"{day.isoformat()} {index % 24:02d}:{index % 60:02d}:00",
        _AUDIENCES[index % len(_AUDIENCES)],
    )


def _csv_line(values: tuple[str, ...]) -> str:
    cells = []
    for value in values:
        if any(c in value for c in ',"\n\r'):
            value = '"' + value.replace('"', '""') + '"'
        cells.append(value)
    return ",".join(cells) + "\n"


def generate_csv(
    execution: SimExecution, start: int, end: int, *, header: bool, chunk_rows: int = 2000
) -> Iterator[bytes]:
    if header:
        yield _csv_line(RESULT_COLUMNS).encode()
    for chunk_start in range(start, end, chunk_rows):
        lines = [_csv_line(result_row(execution, i)) for i in range(chunk_start, min(end, chunk_start + chunk_rows))]
        yield "".join(lines).encode()


def expected_rows(execution: SimExecution) -> list[tuple[str, ...]]:
    """Every row of a result, for tests to compare against what was loaded."""
    return [result_row(execution, i) for i in range(execution.profile.rows)]
