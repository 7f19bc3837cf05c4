"""The control socket: `recomamp reload` asks the running daemon to check and swap its config, and hears the verdict.

Why a socket and not only SIGHUP: a signal carries no answer, so `systemctl reload` could not fail on a broken
config; and on systemd 252 an `ExecReload=` process of a unit with a mount namespace gets no `LoadCredential=`
credentials (systemd issue #35227), so it cannot check the config itself. The daemon, which has them, does.

One request per connection, one JSON line each way:
  → {"command": "reload"}       ← {"ok": true, "applied": true, "changed_keys": [...], "needs_restart": [...]}
  → {"command": "ping"}         ← {"ok": true, "replica": "...", "pid": 123}
The socket is a file in systemd's RuntimeDirectory= (mode 0600): whoever may open it may reload the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from recomamp.daemon.reload import ReloadVerdict
from recomamp.logs import get_logger

log = get_logger(__name__)

ReloadCallable = Callable[[], Awaitable[ReloadVerdict]]  # the daemon's reload: validate, swap, say what it did

REQUEST_LIMIT_BYTES = 4096
REQUEST_TIMEOUT_SECONDS = 5.0


class ControlSocketError(Exception):
    """[daemon] control_socket cannot be had: the message names the key, the path and what to do."""


async def bind_control(path: str, *, replica: str, reload: ReloadCallable) -> asyncio.Server | None:
    """Bind the control socket ([daemon] control_socket) before READY (None when it is off). ControlSocketError
    when another running daemon answers on it (unlinking it would take `recomamp reload` away from that one) or it
    cannot be made. `ping` answers with `replica`; `reload` calls `reload()`."""
    if not path:
        return None
    socket_path = Path(path)
    if await _answers(socket_path):
        raise ControlSocketError(
            f"[daemon] control_socket {path} is in use by another running daemon: give each replica on a host its "
            'own (recomamp@.service does), or "" to turn it off'
        )
    try:
        await asyncio.to_thread(_clear, socket_path)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            server = await asyncio.start_unix_server(
                lambda reader, writer: _handle(replica, reload, reader, writer),
                path=str(socket_path),
                limit=REQUEST_LIMIT_BYTES,
            )
        finally:
            os.umask(old_umask)
    except OSError as exc:
        raise ControlSocketError(
            f"[daemon] control_socket {path} cannot be created ({exc.strerror or exc}): set a path the daemon may "
            'write, or "" to turn it off'
        ) from exc
    log.info("control_socket_listening", path=str(socket_path))
    return server


async def serve_control(server: asyncio.Server | None) -> None:
    """The supervised task of the bound socket (the daemon's listeners remove its file at exit)."""
    if server is None:
        await asyncio.Event().wait()  # off: `recomamp reload` is not available, SIGHUP still is
        return
    await server.serve_forever()


async def close_control(server: asyncio.Server, path: str) -> None:
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 5)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a few microseconds, at exit


async def _answers(socket_path: Path) -> bool:
    """A daemon listens on this socket file (not one a killed daemon left behind)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket_path)), 2.0)
    except (OSError, TimeoutError):
        return False  # no file, nobody listening (refused), or not ours to open: the bind says which
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return True


async def _handle(
    replica: str, reload: ReloadCallable, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        answer = await _answer(replica, reload, reader)
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
    except (ConnectionError, TimeoutError):
        pass  # the client went away: nothing to tell
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _clear(socket_path: Path) -> None:
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()  # a socket file a killed daemon left behind


async def _answer(replica: str, reload: ReloadCallable, reader: asyncio.StreamReader) -> dict[str, Any]:
    try:
        line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_SECONDS)
        request = json.loads(line)
        command = request.get("command") if isinstance(request, dict) else None
    except (ValueError, asyncio.LimitOverrunError):
        return {"ok": False, "problems": ["the request is not one JSON object on one line"]}
    if command == "ping":
        return {"ok": True, "replica": replica, "pid": os.getpid()}
    if command == "reload":
        log.info("config_reload_requested", via="control socket")
        verdict = await reload()
        return {
            "ok": verdict.applied,
            "applied": verdict.applied,
            "problems": list(verdict.problems),
            "changed_keys": list(verdict.changed_keys),
            "needs_restart": list(verdict.needs_restart),
        }
    return {"ok": False, "problems": [f"unknown command {command!r}: use reload or ping"]}
