"""`recomamp standalone`: a sandbox that stays up to play in, after `make demo`.

The embedded Postgres, the AMC/LWA simulator, the Snowflake emulator and the daemon, in the foreground. It
writes DIR/recomamp.toml, seeds one healthy user with one daily schedule, prints `export RECOMAMP_CONFIG=…`
and three commands to try, and on Ctrl-C (or SIGTERM) stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import asyncpg

from recomamp.sandbox.demo import seed_user, write_installation
from recomamp.sandbox.embedded import free_port, start_fakesnow, start_postgres
from recomamp.sandbox.simulator import AmcSimulator, InstanceProfile
from recomamp.store.db import init_connection

DATABASE = "recomamp_standalone"


async def _standalone(workdir: Path) -> int:
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    print("recomamp standalone: starting an embedded Postgres, the AMC/LWA simulator and a Snowflake emulator…")
    admin_dsn = await asyncio.to_thread(start_postgres, workdir / "postgres")
    simulator = AmcSimulator(
        default_profile=InstanceProfile(rows=240, files=2, pending_seconds=1.0, running_seconds=3.0)
    )
    await simulator.start()
    snow = await asyncio.to_thread(start_fakesnow, None, workdir / "fakesnow.log")
    daemon: asyncio.subprocess.Process | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        metrics = f"127.0.0.1:{free_port()}"
        dsn, config_path, box = await write_installation(
            admin_dsn, simulator, workdir, database=DATABASE, alerts_url=None, metrics_listen=metrics
        )
        connection = await asyncpg.connect(dsn)
        await init_connection(connection)
        try:
            await seed_user(
                connection, box, simulator, snow, "ada@example.com", "amc-ada-1", 1, ("daily",), due_now=False
            )
        finally:
            await connection.close()
        log_path = workdir / "daemon.log"
        with log_path.open("ab") as log:
            daemon = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "recomamp", "run", "--config", str(config_path),
                stdout=log, stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )  # fmt: skip
        print(
            f"""
Up: Postgres, the simulator on {simulator.base_url}, the Snowflake emulator on {snow.host}:{snow.port},
and the daemon (pid {daemon.pid}, its JSON log in {log_path}; metrics on http://{metrics}/metrics).
One user, ada@example.com, with one daily schedule (id 1); `schedules run-now 1` runs it now.

In another terminal:
  export RECOMAMP_CONFIG={config_path}
  recomamp status
  recomamp schedules run-now 1
  recomamp runs list

Ctrl-C stops everything this started.""",
            flush=True,
        )
        waiter = asyncio.create_task(daemon.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if waiter.done():
            print(f"the daemon exited with {daemon.returncode}; see {log_path}", file=sys.stderr)
            return 1
        return 0
    finally:
        print("stopping: the daemon, the Snowflake emulator, the simulator, Postgres…", flush=True)
        if daemon is not None and daemon.returncode is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(daemon.wait(), 30)
            except TimeoutError:
                daemon.kill()
                await daemon.wait()
        snow.stop()
        await simulator.stop()
        # The embedded Postgres stops when this process exits (pgserver's cleanup).
        with contextlib.suppress(Exception):
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)


def run_standalone(workdir: Path) -> int:
    return asyncio.run(_standalone(workdir.resolve()))
