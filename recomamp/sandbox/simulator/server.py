"""The server that mounts both simulators on one port: Login with Amazon (`lwa.py`) and AMC (`amc.py`), with
the one fault script (`faults.py`) both play from.

`AmcSimulator` is the name the tests, the sandbox, the demo and the bench know; it reads and sets each
simulator's settings and state under the names they had before the split (`simulator.adhoc_quota = 1`,
`simulator.consent_user = …`), so a test scripts "Amazon" without knowing which half answers.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Generic, Literal, TypeVar, cast

from aiohttp import web

from recomamp.sandbox.simulator.amc import AmcApiSimulator, InstanceProfile, SimExecution, Unconfirmed
from recomamp.sandbox.simulator.faults import FaultScript, json_response
from recomamp.sandbox.simulator.lwa import LwaSimulator

T = TypeVar("T")


class _Of(Generic[T]):
    """An attribute of one part (`lwa`, `amc` or `faults`), read and set through the server by its own name."""

    def __init__(self, part: Literal["lwa", "amc", "faults"]) -> None:
        self._part = part
        self._name = ""

    def __set_name__(self, owner: type[object], name: str) -> None:
        self._name = name

    def __get__(self, server: object, owner: type[object] | None = None) -> T:
        return cast(T, getattr(getattr(server, self._part), self._name))

    def __set__(self, server: object, value: T) -> None:
        setattr(getattr(server, self._part), self._name, value)


class AmcSimulator:
    # Login with Amazon
    client_id = _Of[str]("lwa")
    client_secret = _Of[str]("lwa")
    access_token_ttl_seconds = _Of[int]("lwa")
    rotate_refresh_tokens = _Of[bool]("lwa")
    return_refresh_token = _Of[bool]("lwa")
    expires_in_as_string = _Of[bool]("lwa")
    code_ttl_seconds = _Of[float]("lwa")
    allowed_return_urls = _Of[list[str]]("lwa")
    refresh_tokens = _Of[dict[str, str]]("lwa")
    access_tokens = _Of[dict[str, tuple[str, float]]]("lwa")
    consent_user = _Of[str | None]("lwa")
    consent_decision = _Of[Literal["approve", "deny"]]("lwa")
    # AMC
    link_ttl_seconds = _Of[float]("amc")
    result_ttl_seconds = _Of[float]("amc")
    list_page_size = _Of[int]("amc")
    url_page_size = _Of[int]("amc")
    default_profile = _Of[InstanceProfile]("amc")
    adhoc_quota = _Of[int | None]("amc")
    quota_window_seconds = _Of[float]("amc")
    quota_refusal_status = _Of[int]("amc")
    unconfirmed = _Of[Unconfirmed]("amc")
    executions = _Of[dict[str, SimExecution]]("amc")
    submissions = _Of[dict[str, deque[float]]]("amc")
    workflows = _Of[dict[tuple[str, str], dict[str, Any]]]("amc")
    base_url = _Of[str]("amc")
    # both
    calls = _Of[Counter[str]]("faults")
    calls_by_user = _Of[Counter[tuple[str, str]]]("faults")
    calls_by_instance = _Of[Counter[tuple[str, str]]]("faults")
    last_headers = _Of[dict[str, dict[str, str]]]("faults")

    def __init__(
        self,
        *,
        client_id: str = "amzn1.application-oa2-client.sandbox",
        client_secret: str = "sandbox-client-secret",
        access_token_ttl_seconds: int = 3600,
        link_ttl_seconds: float = 600.0,
        result_ttl_seconds: float = 86_400.0,
        list_page_size: int = 25,
        url_page_size: int = 25,
        rotate_refresh_tokens: bool = False,
        return_refresh_token: bool = True,
        expires_in_as_string: bool = False,
        default_profile: InstanceProfile | None = None,
        adhoc_quota: int | None = 30,
        quota_window_seconds: float = 86_400.0,
        quota_refusal_status: int = 400,
        code_ttl_seconds: float = 300.0,
        allowed_return_urls: tuple[str, ...] = ("http://localhost:8765/callback",),
        unconfirmed: Unconfirmed | None = None,
    ) -> None:
        self.faults = FaultScript()
        self.lwa = LwaSimulator(
            self.faults,
            client_id=client_id,
            client_secret=client_secret,
            access_token_ttl_seconds=access_token_ttl_seconds,
            rotate_refresh_tokens=rotate_refresh_tokens,
            return_refresh_token=return_refresh_token,
            expires_in_as_string=expires_in_as_string,
            code_ttl_seconds=code_ttl_seconds,
            allowed_return_urls=allowed_return_urls,
        )
        self.amc = AmcApiSimulator(
            self.lwa,
            self.faults,
            link_ttl_seconds=link_ttl_seconds,
            result_ttl_seconds=result_ttl_seconds,
            list_page_size=list_page_size,
            url_page_size=url_page_size,
            default_profile=default_profile,
            adhoc_quota=adhoc_quota,
            quota_window_seconds=quota_window_seconds,
            quota_refusal_status=quota_refusal_status,
            unconfirmed=unconfirmed,
        )
        # Scripting, from Python: each call goes to the part it scripts.
        self.add_user = self.lwa.add_user
        self.revoke = self.lwa.revoke
        self.expire_access_tokens = self.lwa.expire_access_tokens
        self.add_instance = self.amc.add_instance
        self.profile = self.amc.profile
        self.add_workflow = self.amc.add_workflow
        self.executions_for = self.amc.executions_for
        self.create_console_execution = self.amc.create_console_execution
        self.add_faults = self.faults.add_faults
        self.pending_faults = self.faults.pending_faults
        self._runner: web.AppRunner | None = None

    # --- serving -------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        self.lwa.mount(app)
        self.amc.mount(app)
        self.faults.mount(app)
        app.router.add_post("/_sandbox/users", self._admin_users)
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

    @property
    def consent_url(self) -> str:
        return f"{self.base_url}/ap/oa"

    # --- scripting over HTTP, for `recomamp sandbox` ------------------------------------------------

    async def _admin_users(self, request: web.Request) -> web.StreamResponse:
        """A user both halves know: a refresh token at LWA, and the AMC instances discovery lists."""
        body = await request.json()
        token = self.add_user(body["email"], body.get("refresh_token"))
        for instance_id in body.get("instances", []):
            self.add_instance(body["email"], instance_id)
        return json_response({"refresh_token": token}, 200)
