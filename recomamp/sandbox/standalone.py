"""`recomamp standalone`: a sandbox that stays up to play in, after `make demo`.

The embedded Postgres, the AMC/LWA simulator, the Snowflake emulator and the daemon, in the foreground. It
starts afresh each time (the simulators keep nothing between starts, so neither does its database), writes
DIR/recomamp.toml, seeds one healthy user with one daily schedule, and prints what to type in another
terminal: the `recomamp` binary by its path, `export RECOMAMP_CONFIG=…`, a few commands, and a recipe for a
user of one's own (authorized through the simulator's consent page, loading into the emulator). On Ctrl-C
(or SIGTERM) it stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
from pathlib import Path

import asyncpg

from recomamp.sandbox.demo import seed_user, write_installation
from recomamp.sandbox.embedded import FakeSnowflake, free_port, start_fakesnow, start_postgres
from recomamp.sandbox.simulator import AmcSimulator, InstanceProfile
from recomamp.store.db import init_connection

DATABASE = "recomamp_standalone"


async def _standalone(workdir: Path) -> int:
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    print(
        f"recomamp standalone: starting afresh in {workdir} (the last standalone's database there is replaced): "
        "an embedded Postgres, the AMC/LWA simulator and a Snowflake emulator…",
        flush=True,
    )
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
        print(guide(config_path, simulator.base_url, snow, daemon.pid, log_path, metrics), flush=True)
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


def recomamp_command() -> str:
    """How to run this very recomamp from another terminal: its venv's script, by path (a new terminal has no
    venv activated, so a bare `recomamp` is `command not found`)."""
    script = Path(sys.executable).parent / "recomamp"
    return str(script) if script.exists() else f"{sys.executable} -m recomamp"


def guide(config_path: Path, simulator_url: str, snow: FakeSnowflake, pid: int, log_path: Path, metrics: str) -> str:
    """What standalone prints once up: every line is to be typed (or pasted) as it is."""
    binary = recomamp_command()
    bin_dir = str(Path(binary).parent) if binary.endswith("/recomamp") else None
    path_line = (
        f"  export PATH={shlex.quote(bin_dir)}:$PATH   # recomamp is {binary}"
        if bin_dir
        else f"  alias recomamp={shlex.quote(binary)}"
    )
    email = "me@example.com"
    return f"""
Up: Postgres, the AMC/LWA simulator on {simulator_url}, the Snowflake emulator on {snow.host}:{snow.port},
and the daemon (pid {pid}, its JSON log in {log_path}; metrics on http://{metrics}/metrics).
One user, ada@example.com, with one daily schedule (id 1).

In another terminal:
{path_line}
  export RECOMAMP_CONFIG={config_path}
  recomamp status
  recomamp schedules run-now 1
  recomamp runs watch --schedule 1
  recomamp runs list
  recomamp reload                      # the daemon here re-reads {config_path.name}

A user of your own, loading into the emulator (the simulator plays Amazon: POST /_sandbox/consent says who
is signed in at "amazon.com" and approves; /_sandbox/users gives them an AMC instance to discover):
  recomamp users add {email}
  curl -s -XPOST {simulator_url}/_sandbox/users -d '{{"email": "{email}", "instances": ["amc-me-1"]}}'
  curl -s -XPOST {simulator_url}/_sandbox/consent -d '{{"email": "{email}", "decision": "approve"}}'
  recomamp users authorize {email} --paste
      # it prints a link: open it with  curl -s -o /dev/null -w '%{{redirect_url}}\\n' 'LINK'
      # and paste the URL that prints (a browser on this machine works too, without --paste)
  recomamp instances discover {email} --add
  echo sandbox | recomamp snowflake set {email} --account sandbox --login ME --database ANALYTICS \\
      --password-file - --host {snow.host} --port {snow.port} --protocol http
  recomamp snowflake test {email}
  recomamp schedules create --user {email} --instance amc-me-1 --name mine --sql 'SELECT 1' --time 06:00 \\
      --snowflake-table my_results
  recomamp schedules run-now 2 && recomamp runs watch --schedule 2

Ctrl-C stops everything this started."""


def run_standalone(workdir: Path) -> int:
    return asyncio.run(_standalone(workdir.resolve()))
