"""Embedded servers: Postgres from the pgserver wheel, and the Snowflake emulator (fakesnow behind a front that
behaves like Snowflake, recomamp.sandbox.snowflake_emulator) as a child process."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit


def with_database(dsn: str, database: str) -> str:
    """The same server, another database."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def recreate_database(admin_dsn: str, name: str) -> str:
    """Drop (closing its sessions) and create database `name` on the server; return its DSN."""
    import asyncpg

    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return with_database(admin_dsn, name)


def start_postgres(data_dir: Path) -> str:
    """Start (or reuse) a Postgres server whose data lives in `data_dir`; return a superuser DSN.

    The server stops when this process exits. As root, pgserver runs it as a system user `pgserver`.
    """
    import warnings

    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (no login session): harmless here.
        warnings.simplefilter("ignore")
        import pgserver

        data_dir.mkdir(parents=True, exist_ok=True)
        # pgserver re-exports get_server without __all__, so mypy cannot see it.
        server = pgserver.get_server(  # type: ignore[attr-defined]
            data_dir.resolve(), cleanup_mode="stop"
        )
        uri: str = server.get_uri()
    return uri


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class FakeSnowflake:
    """fakesnow in server mode: the real connector talks to it over HTTP, as it would to Snowflake."""

    host: str
    port: int
    process: subprocess.Popen[bytes]

    def _control(self, path: str, changes: dict[str, Any] | None = None) -> Any:
        """The emulator's control endpoints (never the loader's way in): its account, settings, transactions."""
        data = json.dumps(changes).encode() if changes is not None else None
        request = urllib.request.Request(
            f"http://{self.host}:{self.port}/_emulator/{path}",
            data=data,
            method="POST" if data is not None else "GET",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())

    def account(self) -> dict[str, Any]:
        """Statements, warehouse statements and seconds, lock waits: in total, and per session QUERY_TAG."""
        return dict(self._control("account"))

    def reset_account(self) -> None:
        self._control("reset", {})

    def transactions(self) -> list[dict[str, Any]]:
        return list(self._control("transactions"))

    def settings(self, **changes: float) -> dict[str, Any]:
        return dict(self._control("settings", changes) if changes else self._control("settings"))

    @contextlib.contextmanager
    def configured(self, **changes: float) -> Iterator[None]:
        """The emulator with these settings for the block (statement_latency_ms, copy_seconds,
        blocking_idle_abort_seconds, idle_abort_seconds, lock_waiter_limit), then as before."""
        before = self.settings()
        self.settings(**changes)
        try:
            yield
        finally:
            self.settings(**{k: before[k] for k in changes})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_fakesnow(port: int | None = None, log_path: Path | None = None, timeout: float = 30.0) -> FakeSnowflake:
    port = port or free_port()
    log_file = open(log_path, "ab") if log_path else None  # noqa: SIM115 - handed to the child, closed below
    try:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
            [sys.executable, "-m", "recomamp.sandbox.snowflake_emulator", "-s", "-p", str(port)],
            stdout=log_file if log_file is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    finally:
        if log_file is not None:
            log_file.close()  # the child has its own copy of the descriptor
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fakesnow exited with code {process.returncode} before it was ready")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return FakeSnowflake("127.0.0.1", port, process)
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"fakesnow did not listen on port {port} within {timeout:.0f} s")


@contextlib.contextmanager
def fakesnow_server(log_path: Path | None = None) -> Iterator[FakeSnowflake]:
    server = start_fakesnow(log_path=log_path)
    try:
        yield server
    finally:
        server.stop()
