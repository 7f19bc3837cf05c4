"""The daemon's HTTP endpoint for operators: /metrics (Prometheus), /healthz and /readyz.

Both health checks answer from memory in microseconds and never touch AMC or Snowflake:
- /healthz: the event loop answers and every supervised task is alive (what the systemd watchdog checks);
- /readyz: the daemon finished starting (the schema was current) and the database answered last time.
Each answers 200 or 503 with a short JSON body saying why.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from recomamp.logs import get_logger
from recomamp.observe.metrics import Metrics

log = get_logger(__name__)


class ListenError(Exception):
    """[metrics] listen cannot be bound: the message names the key, the address and what to do."""


def listen_problem(listen: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f'[metrics] listen {listen} is in use: set another port, or "" to turn metrics off'
    return (
        f"[metrics] listen {listen} cannot be bound ({exc.strerror or exc}): set an address of this host, "
        'or "" to turn metrics off'
    )


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class MetricsServer:
    def __init__(
        self,
        metrics: Metrics,
        *,
        alive: Callable[[], tuple[bool, str]],
        ready: Callable[[], tuple[bool, str]],
    ) -> None:
        self._metrics = metrics
        self._alive = alive
        self._ready = ready
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._exposition)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def start(self, listen: str) -> None:
        """Bind and serve; ListenError when the address cannot be had (the daemon then stops before READY)."""
        host, port = parse_listen(listen)
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port).start()
        except OSError as exc:
            await self.stop()
            raise ListenError(listen_problem(listen, exc)) from exc
        log.info("metrics_listening", listen=listen, paths=["/metrics", "/healthz", "/readyz"])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _exposition(self, _: web.Request) -> web.Response:
        response = web.Response(body=self._metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _healthz(self, _: web.Request) -> web.Response:
        return self._health(self._alive)

    async def _readyz(self, _: web.Request) -> web.Response:
        return self._health(self._ready)

    @staticmethod
    def _health(check: Callable[[], tuple[bool, str]]) -> web.Response:
        ok, detail = check()
        return web.Response(
            status=200 if ok else 503,
            text=json.dumps({"ok": ok, "detail": detail}),
            content_type="application/json",
        )
