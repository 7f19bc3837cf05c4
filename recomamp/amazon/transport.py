"""The AMC reporting API over HTTP: headers, the request loop, and the one classifier of AMC's answers.

- Reads (GET) are retried on 429 (Retry-After, else backoff), 5xx and timeouts.
- A 401 refreshes the access token once, then the call is repeated (a 401 did nothing, so this is
  safe for a POST too).
- A call that is not idempotent (the POST that creates an execution) is never retried here: a 5xx,
  a timeout or a dropped connection raises `SubmitUncertain`, and the caller searches AMC first.
- No `Accept` header: working clients send none, and AMC's documented media type is not JSON's.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from recomamp.amazon.lwa import NETWORK_ERRORS
from recomamp.domain.retry import SERVER_ERROR_STATUSES, parse_retry_after
from recomamp.logs import get_logger

log = get_logger(__name__)


class TokenSource(Protocol):
    """Where the client gets an access token; `stale` is one AMC just rejected with 401."""

    async def __call__(self, stale: str | None = None) -> str: ...


@dataclass(frozen=True)
class AmcTarget:
    base_url: str  # the instance's apiEndpoint, or the region's host
    instance_id: str
    advertiser_id: str
    marketplace_id: str

    @property
    def instance_key(self) -> str:
        """The instance as AMC counts its quota: host and instance id."""
        return f"{self.base_url.rstrip('/')}/{self.instance_id}"


class AnswerKind(StrEnum):
    OK = "ok"
    UNAUTHORIZED = "unauthorized"
    THROTTLED = "throttled"
    QUOTA = "quota"  # AMC's ad-hoc execution quota for the instance is used up
    SERVER = "server"
    NOT_FOUND = "not_found"
    REJECTED = "rejected"  # any other 4xx: the request itself is wrong


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: Mapping[str, str]


# AMC words its quota refusal in prose, and the status code is not documented: recognise the words.
_QUOTA_WORDS = re.compile(
    r"quota|limit (?:has been |was )?(?:reached|exceeded)|exceed(?:s|ed)? (?:the |your )?(?:\w+ )?limit|"
    r"too many (?:\w+ )*executions",
    re.IGNORECASE,
)


def detail_of(body: Any) -> str | None:
    if isinstance(body, dict):
        for key in ("details", "message", "error_description", "error", "code"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])
    return body[:300] if isinstance(body, str) and body else None


def classify_answer(method: str, path: str, status: int, body: Any) -> AnswerKind:
    """The one place AMC's answers are classified."""
    if status < 300:
        return AnswerKind.OK
    detail = detail_of(body) or ""
    creates_execution = method == "POST" and path.rstrip("/").endswith("/workflowExecutions")
    if creates_execution and 400 <= status < 500 and _QUOTA_WORDS.search(detail):
        return AnswerKind.QUOTA
    if status == 401:
        return AnswerKind.UNAUTHORIZED
    if status == 429:
        return AnswerKind.THROTTLED
    if status in SERVER_ERROR_STATUSES or status >= 500:
        return AnswerKind.SERVER
    if status == 404:
        return AnswerKind.NOT_FOUND
    return AnswerKind.REJECTED


class AmcError(Exception):
    """A call failed. `transient` says whether a later try may succeed."""

    def __init__(self, message: str, *, status: int | None = None, transient: bool, detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient
        self.detail = detail


class SubmitUncertain(AmcError):
    """The POST may or may not have created an execution."""


class QuotaRefused(AmcError):
    """AMC refused the POST for its ad-hoc quota: nothing was created. Wait; never a failure."""

    def __init__(self, message: str, *, status: int, detail: str | None, retry_after_seconds: float | None) -> None:
        super().__init__(message, status=status, transient=True, detail=detail)
        self.retry_after_seconds = retry_after_seconds


@dataclass(frozen=True)
class AmcRetryPolicy:
    max_attempts: int
    waits: tuple[float, ...]
    retry_after_cap_seconds: float
    poll_initial_seconds: float
    poll_max_seconds: float
    poll_multiplier: float
    request_timeout_seconds: float
    # Listing may lag a POST: after an uncertain POST finds nothing, search once more after this.
    listing_lag_seconds: float = 10.0

    def wait(self, attempt: int) -> float:
        return self.waits[min(attempt, len(self.waits)) - 1] if self.waits else 0.0


@dataclass(frozen=True)
class _Request:
    url: str
    target: AmcTarget | None
    method: str
    path: str
    params: Mapping[str, str] | None
    body: Any


@dataclass
class _Grant:
    """The access token a call sends, and whether the call has refreshed it already (once at most)."""

    token: str
    refreshed: bool = False


class _NotOk(Exception):
    """An attempt got no answer (a timeout, a dropped connection) or one that is not OK (nor a 401 a refresh
    answers): the classification decides whether it is tried again."""

    def __init__(
        self, *, answer: Answer | None = None, kind: AnswerKind | None = None, error: BaseException | None = None
    ) -> None:
        self.answer, self.kind, self.error = answer, kind, error


class _TryAgain(Exception):
    """The attempt failed in a way that is tried again after `wait` seconds."""

    def __init__(self, wait: float) -> None:
        self.wait = wait


def _asked_wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    return exc.wait if isinstance(exc, _TryAgain) else 0.0


class AmcTransport:
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
        self.policy = policy
        self.sleep = sleep

    @property
    def http(self) -> aiohttp.ClientSession:
        return self._http

    def reconfigure(self, policy: AmcRetryPolicy) -> None:
        self.policy = policy

    def _headers(self, token: str, target: AmcTarget | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {token}", "Amazon-Advertising-API-ClientId": self._client_id}
        if target is not None:
            if target.advertiser_id:
                headers["Amazon-Advertising-API-AdvertiserId"] = target.advertiser_id
            if target.marketplace_id:
                headers["Amazon-Advertising-API-MarketplaceId"] = target.marketplace_id
        return headers

    async def _send_once(
        self, url: str, headers: dict[str, str], method: str, params: Mapping[str, str] | None, body: Any
    ) -> Answer:
        timeout = aiohttp.ClientTimeout(total=self.policy.request_timeout_seconds)
        async with self._http.request(
            method,
            url,
            params=params,
            json=body,
            headers=headers,
            timeout=timeout,
            # No Accept at all: aiohttp would add `*/*`, and AMC's documented media type is not JSON's.
            skip_auto_headers=("Accept",),
        ) as response:
            text = await response.text()
            try:
                parsed: Any = json.loads(text) if text else None
            except ValueError:
                parsed = text
            return Answer(response.status, parsed, response.headers)

    async def reporting(
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
        """A call under /amc/reporting/{instanceId}."""
        url = f"{target.base_url}/amc/reporting/{target.instance_id}{path}"
        return await self.call(url, target, tokens, method, path, params=params, body=body, idempotent=idempotent)

    async def call(
        self,
        url: str,
        target: AmcTarget | None,
        tokens: TokenSource,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        idempotent: bool = True,
    ) -> Any:
        """One logical call. Non-idempotent calls are retried only where the request surely did nothing.

        tenacity, as the token refresh and the outage gate: each attempt either answers or raises `_TryAgain`
        with the wait its classification chose (the decisions below also end the call, past the policy's
        attempts or on an answer that is final), and the sleep is the transport's, so tests can compress it."""
        grant = _Grant(await tokens())
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_TryAgain),
            wait=_asked_wait,
            sleep=lambda seconds: self.sleep(seconds),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    return await self._attempt(_Request(url, target, method, path, params, body), tokens, grant)
                except _NotOk as caught:
                    failed = caught
                # Outside the except block, so a final error does not carry _NotOk as its context.
                number = attempt.retry_state.attempt_number
                if failed.error is not None:
                    wait = self._wait_after_network_error(failed.error, method, path, number, idempotent)
                else:
                    assert failed.answer is not None
                    assert failed.kind is not None
                    wait = self._wait_after_answer(failed.answer, failed.kind, method, path, number, idempotent)
                raise _TryAgain(wait)
        raise AssertionError("tenacity ended without a result or an error")  # pragma: no cover

    async def _attempt(self, request: _Request, tokens: TokenSource, grant: _Grant) -> Any:
        """One attempt; a 401 refreshes the token once per call and sends again within the same attempt."""
        method, path = request.method, request.path
        while True:
            try:
                answer = await self._send_once(
                    request.url, self._headers(grant.token, request.target), method, request.params, request.body
                )
            except NETWORK_ERRORS as exc:
                raise _NotOk(error=exc) from exc
            kind = classify_answer(method, path, answer.status, answer.body)
            if kind is AnswerKind.OK:
                return answer.body
            if kind is AnswerKind.UNAUTHORIZED and not grant.refreshed:
                # The access token expired mid-run: refresh once, then repeat (a 401 did nothing).
                log.info("amc_token_rejected", path=path, http_status=401)
                grant.token = await tokens(stale=grant.token)
                grant.refreshed = True
                continue
            raise _NotOk(answer=answer, kind=kind)

    def _wait_after_network_error(
        self, exc: BaseException, method: str, path: str, attempt: int, idempotent: bool
    ) -> float:
        """How long to wait before trying `attempt + 1` after a timeout or a dropped connection, or the error."""
        if not idempotent:
            raise SubmitUncertain(
                f"{method} {path}: {type(exc).__name__}; the request may have been processed",
                transient=True,
            ) from exc
        if attempt >= self.policy.max_attempts:
            raise AmcError(f"{method} {path}: {type(exc).__name__} after {attempt} attempts", transient=True) from exc
        wait = self.policy.wait(attempt)
        log.warning(
            "amc_request_retry",
            path=path,
            attempt=attempt,
            exception_class=type(exc).__name__,
            wait_seconds=wait,
        )
        return wait

    def _wait_after_answer(
        self, answer: Answer, kind: AnswerKind, method: str, path: str, attempt: int, idempotent: bool
    ) -> float:
        """How long to wait before trying `attempt + 1` after an answer that is not OK, or the error it is."""
        detail = detail_of(answer.body)
        if kind is AnswerKind.QUOTA:
            raise QuotaRefused(
                f"AMC refused {method} {path} for its execution quota (HTTP {answer.status}: {detail})",
                status=answer.status,
                detail=detail,
                retry_after_seconds=parse_retry_after(answer.headers.get("Retry-After")),
            )
        if kind is AnswerKind.THROTTLED and attempt < self.policy.max_attempts:
            # A 429 means the request was not processed: safe to repeat, a POST included.
            retry_after = parse_retry_after(answer.headers.get("Retry-After"))
            wait = (
                min(retry_after, self.policy.retry_after_cap_seconds)
                if retry_after is not None
                else self.policy.wait(attempt)
            )
            log.warning("amc_throttled", path=path, attempt=attempt, http_status=429, wait_seconds=wait)
            return wait
        if kind is AnswerKind.SERVER:
            if not idempotent:
                raise SubmitUncertain(
                    f"{method} {path}: HTTP {answer.status}; the request may have been processed",
                    status=answer.status,
                    transient=True,
                    detail=detail,
                )
            if attempt < self.policy.max_attempts:
                wait = self.policy.wait(attempt)
                log.warning(
                    "amc_request_retry", path=path, attempt=attempt, http_status=answer.status, wait_seconds=wait
                )
                return wait
        raise AmcError(
            f"AMC answered HTTP {answer.status} to {method} {path}" + (f": {detail}" if detail else ""),
            status=answer.status,
            transient=kind in (AnswerKind.THROTTLED, AnswerKind.SERVER),
            detail=detail,
        )
