"""The fault-scripting piece both simulators share: faults queued per route, per user and per instance, each
played once, and how many calls each route received.

Tests script it from Python (`AmcSimulator.add_faults`, `.calls`); `recomamp sandbox` from outside, with
`POST /_sandbox/faults` {"route": R, "faults": […], "user"?: E, "instance"?: ID} and `GET /_sandbox/calls`.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

Route = Literal[
    "lwa_token",
    "consent",
    "create_execution",
    "get_execution",
    "list_executions",
    "cancel_execution",
    "download_urls",
    "download_file",
    "workflows",
    "accounts",
    "instances",
]
ROUTES: tuple[str, ...] = Route.__args__  # type: ignore[attr-defined]


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
    # AMC handles the call only after this long (a slow gateway), then answers as usual: a POST is counted
    # against the quota when it is handled, not when the client sent it.
    delay_seconds: float | None = None

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
    def invalid_client(cls, status: int = 401) -> Fault:
        return cls.http(status, {"error": "invalid_client", "error_description": "Client authentication failed"})

    @classmethod
    def throttled(cls, retry_after: float | None = None) -> Fault:
        headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else {}
        return cls(status=429, body={"code": "429", "details": "Too Many Requests"}, headers=headers)

    @classmethod
    def hang(cls, seconds: float = 30.0) -> Fault:
        return cls(hang_seconds=seconds)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        return cls(delay_seconds=seconds)

    @classmethod
    def dropped(cls) -> Fault:
        return cls(drop=True)

    @classmethod
    def created_but_504(cls) -> Fault:
        return cls(status=504, body={"message": "Endpoint request timed out"}, create_anyway=True)

    @classmethod
    def created_but_dropped(cls) -> Fault:
        return cls(drop=True, create_anyway=True)

    @classmethod
    def truncated(cls) -> Fault:
        return cls(truncate=True)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        return cls(**data)


class FaultScript:
    """The faults still to play and the calls counted, for every route of both simulators."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.calls_by_user: Counter[tuple[str, str]] = Counter()
        self.calls_by_instance: Counter[tuple[str, str]] = Counter()
        self.last_headers: dict[str, dict[str, str]] = {}
        self._faults: dict[tuple[str, str | None, str | None], deque[Fault]] = {}

    def add_faults(
        self, route: Route | str, *faults: Fault, user: str | None = None, instance: str | None = None
    ) -> None:
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; routes: {', '.join(ROUTES)}")
        self._faults.setdefault((route, user, instance), deque()).extend(faults)

    def pending_faults(self) -> int:
        return sum(len(queue) for queue in self._faults.values())

    def count(self, route: str, user: str | None, instance: str | None, request: web.Request | None = None) -> None:
        self.calls[route] += 1
        if user:
            self.calls_by_user[(route, user)] += 1
        if instance:
            self.calls_by_instance[(route, instance)] += 1
        if request is not None:
            self.last_headers[route] = dict(request.headers)

    def take(self, route: str, user: str | None, instance: str | None) -> Fault | None:
        for key in ((route, user, instance), (route, user, None), (route, None, instance), (route, None, None)):
            queue = self._faults.get(key)
            if queue:
                return queue.popleft()
        return None

    def mount(self, app: web.Application) -> None:
        app.router.add_post("/_sandbox/faults", self._admin_faults)
        app.router.add_get("/_sandbox/calls", self._admin_calls)

    async def _admin_faults(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        faults = [Fault.from_json(item) for item in body["faults"]]
        self.add_faults(body["route"], *faults, user=body.get("user"), instance=body.get("instance"))
        return json_response({"pending": self.pending_faults()}, 200)

    async def _admin_calls(self, _: web.Request) -> web.StreamResponse:
        return json_response(dict(self.calls), 200)


async def play(request: web.Request, fault: Fault) -> web.StreamResponse:
    """Answer `request` as `fault` says: late, not at all, or with its status, body and headers."""
    if fault.hang_seconds is not None:
        await asyncio.sleep(fault.hang_seconds)
    if fault.drop:
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError  # the connection is gone: nothing is sent
    return json_response(fault.body if fault.body is not None else {}, fault.status or 500, fault.headers)


def json_response(body: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=body if isinstance(body, str) else json.dumps(body),
        content_type="application/json",
        headers=headers,
    )
