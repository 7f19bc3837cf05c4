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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recomamp.logs import get_logger

if TYPE_CHECKING:
    from recomamp.daemon.process import Daemon

log = get_logger(__name__)

REQUEST_LIMIT_BYTES = 4096
REQUEST_TIMEOUT_SECONDS = 5.0


async def serve_control(daemon: Daemon) -> None:
    path = daemon.config.daemon.control_socket
    if not path:
        await asyncio.Event().wait()  # off: `recomamp reload` is not available, SIGHUP still is
        return
    socket_path = Path(path)
    await asyncio.to_thread(_clear, socket_path)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            answer = await _answer(daemon, reader)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # the client went away: nothing to tell
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    old_umask = os.umask(0o177)  # the socket is born 0600: no window where others could connect
    try:
        server = await asyncio.start_unix_server(handle, path=str(socket_path), limit=REQUEST_LIMIT_BYTES)
    finally:
        os.umask(old_umask)
    log.info("control_socket_listening", path=str(socket_path))
    try:
        async with server:
            await server.serve_forever()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)  # a few microseconds, at exit


def _clear(socket_path: Path) -> None:
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()  # a socket file a killed daemon left behind


async def _answer(daemon: Daemon, reader: asyncio.StreamReader) -> dict[str, Any]:
    try:
        line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_SECONDS)
        request = json.loads(line)
        command = request.get("command") if isinstance(request, dict) else None
    except (ValueError, asyncio.LimitOverrunError):
        return {"ok": False, "problems": ["the request is not one JSON object on one line"]}
    if command == "ping":
        return {"ok": True, "replica": daemon.replica_name, "pid": os.getpid()}
    if command == "reload":
        log.info("config_reload_requested", via="control socket")
        verdict = await daemon.reload()
        return {
            "ok": verdict.applied,
            "applied": verdict.applied,
            "problems": list(verdict.problems),
            "changed_keys": list(verdict.changed_keys),
            "needs_restart": list(verdict.needs_restart),
        }
    return {"ok": False, "problems": [f"unknown command {command!r}: use reload or ping"]}
