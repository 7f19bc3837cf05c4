"""The AMC reporting API client.

- Reads (GET) are retried on 429 (Retry-After, else backoff), 5xx and timeouts.
- A 401 refreshes the access token once, then the call is repeated.
- A POST that creates an execution is never simply retried: AMC has no idempotency key and runs are
  billed. After a 5xx or a timeout, the executions created since the attempt are searched for this run's
  marker, and only when none carries it is the POST sent again.
- Result files are streamed to disk, chunk by chunk; an expired link (403) means fresh links, and a
  truncated body means the file is fetched again.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from yarl import URL

from recomamp.amazon.lwa import NETWORK_ERRORS
from recomamp.domain.retry import SERVER_ERROR_STATUSES, parse_retry_after
from recomamp.logs import get_logger

log = get_logger(__name__)

TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "REJECTED"})
RUNNING_STATUSES = frozenset({"PENDING", "RUNNING", "PUBLISHING"})
MARKER_PREFIX = "-- recomamp-run:"
_MARKER = re.compile(r"--\s*recomamp-run:\s*(\S+)")


class TokenSource(Protocol):
    """Where the client gets an access token; `stale` is one AMC just rejected with 401."""

    async def __call__(self, stale: str | None = None) -> str: ...


@dataclass(frozen=True)
class AmcTarget:
    base_url: str
    instance_id: str
    advertiser_id: str
    marketplace_id: str


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

    def body(self, marker: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "timeWindowType": "EXPLICIT",
            "timeWindowStart": self.window_start.strftime("%Y-%m-%dT%H:%M:%S"),
            "timeWindowEnd": self.window_end.strftime("%Y-%m-%dT%H:%M:%S"),
            "timeWindowTimeZone": self.timezone,
        }
        if self.sql_query is not None:
            sql = self.sql_query.rstrip()
            # The marker rides in a SQL comment: AMC ignores it, and lists return it with the workflow.
            body["workflow"] = {"sqlQuery": f"{sql}\n{MARKER_PREFIX} {marker}" if marker else sql}
        else:
            body["workflowId"] = self.workflow_id
        if self.parameter_values:
            body["parameterValues"] = dict(self.parameter_values)
        if self.timeout_seconds:
            body["workflowExecutionTimeoutSeconds"] = self.timeout_seconds
        return body


@dataclass(frozen=True)
class Execution:
    execution_id: str
    status: str
    status_reason: str | None
    workflow_id: str | None
    window_start: str | None
    window_end: str | None
    sql_query: str | None
    raw: Mapping[str, Any]

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def marker(self) -> str | None:
        match = _MARKER.search(self.sql_query or "")
        return match.group(1) if match else None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Execution:
        workflow = body.get("workflow") if isinstance(body.get("workflow"), dict) else {}
        return cls(
            execution_id=str(body["workflowExecutionId"]),
            status=str(body.get("status", "UNKNOWN")),
            status_reason=body.get("statusReason"),
            workflow_id=body.get("workflowId"),
            window_start=body.get("timeWindowStart"),
            window_end=body.get("timeWindowEnd"),
            sql_query=(workflow or {}).get("sqlQuery"),
            raw=body,
        )


class AmcError(Exception):
    """A call failed. `transient` says whether a later try may succeed."""

    def __init__(self, message: str, *, status: int | None = None, transient: bool, detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient
        self.detail = detail


class SubmitUncertain(AmcError):
    """The POST may or may not have created an execution, and the lookup could not tell."""


@dataclass(frozen=True)
class AmcRetryPolicy:
    max_attempts: int
    waits: tuple[float, ...]
    retry_after_cap_seconds: float
    poll_initial_seconds: float
    poll_max_seconds: float
    poll_multiplier: float
    request_timeout_seconds: float

    def wait(self, attempt: int) -> float:
        return self.waits[min(attempt, len(self.waits)) - 1] if self.waits else 0.0


@dataclass(frozen=True)
class _Answer:
    status: int
    body: Any
    headers: Mapping[str, str]


def _detail(body: Any) -> str | None:
    if isinstance(body, dict):
        for key in ("details", "message", "error_description", "error"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return body[:300] if isinstance(body, str) and body else None


class AmcClient:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        client_id: str,
        policy: AmcRetryPolicy,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._http = http
        self._client_id = client_id
        self._policy = policy
        self._sleep = sleep

    def reconfigure(self, policy: AmcRetryPolicy) -> None:
        self._policy = policy

    @property
    def policy(self) -> AmcRetryPolicy:
        return self._policy

    # --- the request loop ----------------------------------------------------------------------------

    async def _send_once(
        self, target: AmcTarget, token: str, method: str, path: str, params: Mapping[str, str] | None, body: Any
    ) -> _Answer:
        headers = {
            "Authorization": f"Bearer {token}",
            "Amazon-Advertising-API-ClientId": self._client_id,
            "Amazon-Advertising-API-AdvertiserId": target.advertiser_id,
            "Amazon-Advertising-API-MarketplaceId": target.marketplace_id,
            "Accept": "application/json",
        }
        url = f"{target.base_url}/amc/reporting/{target.instance_id}{path}"
        timeout = aiohttp.ClientTimeout(total=self._policy.request_timeout_seconds)
        async with self._http.request(
            method, url, params=params, json=body, headers=headers, timeout=timeout
        ) as response:
            text = await response.text()
            try:
                parsed: Any = json.loads(text) if text else None
            except ValueError:
                parsed = text
            return _Answer(response.status, parsed, response.headers)

    async def _call(
        self,
        target: AmcTarget,
        tokens: TokenSource,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        idempotent: bool = True,
    ) -> Any:
        """One logical call. Non-idempotent calls are retried only where the request surely did nothing."""
        token = await tokens()
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = await self._send_once(target, token, method, path, params, body)
            except NETWORK_ERRORS as exc:
                if not idempotent:
                    raise SubmitUncertain(
                        f"{method} {path}: {type(exc).__name__}; the request may have been processed",
                        transient=True,
                    ) from exc
                if attempt >= self._policy.max_attempts:
                    raise AmcError(
                        f"{method} {path}: {type(exc).__name__} after {attempt} attempts", transient=True
                    ) from exc
                wait = self._policy.wait(attempt)
                log.warning(
                    "amc_request_retry",
                    path=path,
                    attempt=attempt,
                    exception_class=type(exc).__name__,
                    wait_seconds=wait,
                )
                await self._sleep(wait)
                continue
            if answer.status < 300:
                return answer.body
            detail = _detail(answer.body)
            if answer.status == 401 and not refreshed:
                # The access token expired mid-run: refresh once, then repeat. A request answered 401
                # did nothing, so this is safe for a POST too.
                log.info("amc_token_rejected", path=path, http_status=401)
                token = await tokens(stale=token)
                refreshed = True
                attempt -= 1
                continue
            if answer.status == 429 and attempt < self._policy.max_attempts:
                retry_after = parse_retry_after(answer.headers.get("Retry-After"))
                wait = (
                    min(retry_after, self._policy.retry_after_cap_seconds)
                    if retry_after is not None
                    else self._policy.wait(attempt)
                )
                log.warning("amc_throttled", path=path, attempt=attempt, http_status=429, wait_seconds=wait)
                await self._sleep(wait)
                continue
            if answer.status in SERVER_ERROR_STATUSES or answer.status >= 500:
                if not idempotent:
                    raise SubmitUncertain(
                        f"{method} {path}: HTTP {answer.status}; the request may have been processed",
                        status=answer.status,
                        transient=True,
                        detail=detail,
                    )
                if attempt < self._policy.max_attempts:
                    wait = self._policy.wait(attempt)
                    log.warning(
                        "amc_request_retry", path=path, attempt=attempt, http_status=answer.status, wait_seconds=wait
                    )
                    await self._sleep(wait)
                    continue
            transient = answer.status == 429 or answer.status >= 500
            raise AmcError(
                f"AMC answered HTTP {answer.status} to {method} {path}" + (f": {detail}" if detail else ""),
                status=answer.status,
                transient=transient,
                detail=detail,
            )

    # --- executions ----------------------------------------------------------------------------------

    async def create_execution(
        self, target: AmcTarget, tokens: TokenSource, request: ExecutionRequest, *, marker: str | None
    ) -> Execution:
        """One POST. Raises SubmitUncertain when it may have created an execution anyway."""
        body = await self._call(
            target, tokens, "POST", "/workflowExecutions", body=request.body(marker), idempotent=False
        )
        return Execution.from_json(body)

    async def get_execution(self, target: AmcTarget, tokens: TokenSource, execution_id: str) -> Execution:
        return Execution.from_json(await self._call(target, tokens, "GET", f"/workflowExecutions/{execution_id}"))

    async def list_executions(
        self,
        target: AmcTarget,
        tokens: TokenSource,
        *,
        since: datetime,
        workflow_id: str | None = None,
        include_workflow: bool = True,
    ) -> AsyncIterator[Execution]:
        params = {
            "minCreationTime": since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "includeWorkflow": "true" if include_workflow else "false",
        }
        if workflow_id:
            params["workflowId"] = workflow_id
        next_token: str | None = None
        while True:
            page_params = dict(params, **({"nextToken": next_token} if next_token else {}))
            body = await self._call(target, tokens, "GET", "/workflowExecutions", params=page_params)
            for item in body.get("executions", []):
                yield Execution.from_json(item)
            next_token = body.get("nextToken")
            if not next_token:
                return

    async def cancel_execution(self, target: AmcTarget, tokens: TokenSource, execution_id: str) -> Execution:
        body = await self._call(
            target, tokens, "PUT", f"/workflowExecutions/{execution_id}", body={"status": "CANCELLED"}
        )
        return Execution.from_json(body)

    async def download_urls(self, target: AmcTarget, tokens: TokenSource, execution_id: str) -> list[str]:
        urls: list[str] = []
        next_token: str | None = None
        while True:
            params = {"nextToken": next_token} if next_token else None
            body = await self._call(
                target, tokens, "GET", f"/workflowExecutions/{execution_id}/downloadUrls", params=params
            )
            urls.extend(str(url) for url in body.get("downloadUrls", []))
            next_token = body.get("nextToken")
            if not next_token:
                return urls

    async def find_submitted(
        self,
        target: AmcTarget,
        tokens: TokenSource,
        request: ExecutionRequest,
        *,
        marker: str,
        since: datetime,
    ) -> Execution | None:
        """The execution an earlier POST for this run created, if any.

        Ad-hoc SQL carries the marker in a comment. A saved workflow carries no marker, so it matches on
        the workflow id and the exact time window, created since the attempt.
        """
        # A little slack for clock skew between us and AMC.
        async for execution in self.list_executions(
            target, tokens, since=since - timedelta(minutes=5), workflow_id=request.workflow_id
        ):
            if request.sql_query is not None:
                if execution.marker == marker:
                    return execution
            elif (
                execution.workflow_id == request.workflow_id
                and execution.window_start == request.body(None)["timeWindowStart"]
                and execution.window_end == request.body(None)["timeWindowEnd"]
            ):
                return execution
        return None

    async def submit_once(
        self,
        target: AmcTarget,
        tokens: TokenSource,
        request: ExecutionRequest,
        *,
        marker: str,
        since: datetime,
        check_first: bool,
    ) -> Execution:
        """Create the run's execution exactly once.

        `check_first` is set when an earlier attempt for this run may have reached AMC (the marker was
        persisted before a crash): then the lookup comes before any POST.
        """
        attempts = 0
        while True:
            if check_first:
                found = await self.find_submitted(target, tokens, request, marker=marker, since=since)
                if found is not None:
                    log.info("amc_execution_found_after_uncertain_submit", amc_execution_id=found.execution_id)
                    return found
            attempts += 1
            try:
                execution = await self.create_execution(target, tokens, request, marker=marker)
            except SubmitUncertain as exc:
                if attempts >= self._policy.max_attempts:
                    raise
                wait = self._policy.wait(attempts)
                log.warning(
                    "amc_submit_uncertain",
                    http_status=exc.status,
                    error=str(exc),
                    attempt=attempts,
                    wait_seconds=wait,
                )
                await self._sleep(wait)
                check_first = True
                continue
            log.info("amc_execution_created", amc_execution_id=execution.execution_id, amc_status=execution.status)
            return execution

    async def wait_until_terminal(
        self,
        target: AmcTarget,
        tokens: TokenSource,
        execution_id: str,
        *,
        on_status: Callable[[Execution], Awaitable[None]] | None = None,
        deadline_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Execution:
        """Poll with growing waits until the execution is SUCCEEDED, FAILED, CANCELLED or REJECTED."""
        wait = self._policy.poll_initial_seconds
        last_status: str | None = None
        started = clock()
        while True:
            if deadline_seconds is not None and clock() - started > deadline_seconds:
                raise AmcError(
                    f"execution {execution_id} was still {last_status} after {deadline_seconds:.0f} s of polling; "
                    "AMC should have stopped it by now. Check it in AMC, and cancel it there if it is stuck",
                    transient=False,
                )
            execution = await self.get_execution(target, tokens, execution_id)
            if execution.status != last_status:
                log.info("amc_execution_status", amc_execution_id=execution_id, amc_status=execution.status)
                last_status = execution.status
                if on_status is not None:
                    await on_status(execution)
            if execution.terminal:
                return execution
            await self._sleep(wait)
            wait = min(wait * self._policy.poll_multiplier, self._policy.poll_max_seconds)

    # --- results -------------------------------------------------------------------------------------

    async def download_results(
        self, target: AmcTarget, tokens: TokenSource, execution_id: str, directory: Path
    ) -> list[Path]:
        """Stream every result file to `directory`. Returns the files in order."""
        urls = await self.download_urls(target, tokens, execution_id)
        paths: list[Path] = []
        index = 0
        link_refreshes = 0
        file_attempts = 0
        while index < len(urls):
            path = directory / f"part-{index:05d}.csv"
            try:
                await self._stream_to_file(urls[index], path)
            except _LinkExpired:
                link_refreshes += 1
                if link_refreshes > self._policy.max_attempts:
                    raise AmcError(
                        "result links kept expiring before they could be fetched", status=403, transient=True
                    ) from None
                log.info("amc_result_link_expired", file_index=index)
                urls = await self.download_urls(target, tokens, execution_id)
                continue
            except _DOWNLOAD_ERRORS as exc:
                file_attempts += 1
                if file_attempts >= self._policy.max_attempts:
                    raise AmcError(
                        f"result file {index + 1} of {len(urls)} could not be downloaded: {type(exc).__name__}",
                        transient=True,
                    ) from exc
                wait = self._policy.wait(file_attempts)
                log.warning(
                    "amc_result_download_retry",
                    file_index=index,
                    exception_class=type(exc).__name__,
                    attempt=file_attempts,
                    wait_seconds=wait,
                )
                await self._sleep(wait)
                continue
            except _DownloadFailed as exc:
                raise AmcError(str(exc), status=exc.status, transient=exc.status >= 500) from None
            paths.append(path)
            index += 1
            file_attempts = 0
        return paths

    async def _stream_to_file(self, url: str, path: Path) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=self._policy.request_timeout_seconds)
        # Pre-signed links carry their own auth: no AMC headers, and the URL must be sent as given.
        async with self._http.get(URL(url, encoded=True), timeout=timeout) as response:
            if response.status == 403:
                raise _LinkExpired
            if response.status != 200:
                raise _DownloadFailed(f"result file answered HTTP {response.status}", response.status)
            with path.open("wb") as output:
                async for chunk in response.content.iter_chunked(1 << 16):
                    output.write(chunk)


# A body cut short (ClientPayloadError) or a network failure: fetch that file again.
_DOWNLOAD_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientPayloadError, *NETWORK_ERRORS)


class _LinkExpired(Exception):
    pass


class _DownloadFailed(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
