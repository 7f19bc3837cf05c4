"""`recomamp standalone` as a newcomer uses it: up, `status` and a run-now through RECOMAMP_CONFIG, Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import psutil
import pytest

from tests.integration.world import wait_until


async def recomamp(*argv: str, config: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "recomamp", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "RECOMAMP_CONFIG": config, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.timeout(180)
async def test_standalone_stays_up_serves_the_cli_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    workdir = tmp_path / "standalone"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "recomamp", "standalone", "--dir", str(workdir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert process.stdout is not None
    printed: list[str] = []
    try:
        while not any("Ctrl-C stops everything" in line for line in printed):
            line = (await asyncio.wait_for(process.stdout.readline(), 90)).decode()
            assert line, "standalone exited early:\n" + "".join(printed)
            printed.append(line)
        (export,) = [line.strip() for line in printed if line.strip().startswith("export RECOMAMP_CONFIG=")]
        config = export.removeprefix("export RECOMAMP_CONFIG=")
        assert Path(config) == workdir.resolve() / "recomamp.toml" and Path(config).exists()
        started = {child.pid for child in psutil.Process(process.pid).children(recursive=True)}
        assert started  # the daemon and the Snowflake emulator at least

        async def healthy() -> bool:
            return (await recomamp("status", config=config))[0] == 0  # a replica alive, nothing needs a person

        await wait_until(healthy, seconds=30, what="`recomamp status` to say all is well")
        code, _, err = await recomamp("schedules", "run-now", "1", config=config)
        assert code == 0, err

        async def succeeded() -> bool:
            code, out, _ = await recomamp("runs", "list", "--json", config=config)
            return code == 0 and [run["status"] for run in json.loads(out)] == ["succeeded"]

        await wait_until(succeeded, seconds=60, what="the run-now to land")
        process.send_signal(signal.SIGINT)
        rest = (await asyncio.wait_for(process.stdout.read(), 60)).decode()
        assert await asyncio.wait_for(process.wait(), 30) == 0, rest
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert "stopping:" in rest
    alive = [pid for pid in started if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert alive == []
    assert not (workdir / "postgres" / "postmaster.pid").exists()  # the embedded Postgres stopped too
