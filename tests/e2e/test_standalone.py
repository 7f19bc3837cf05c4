"""`recomamp standalone` as a newcomer uses it: up, `status` and a run-now through RECOMAMP_CONFIG, the printed
recipe for a user of one's own run line by line in bash as printed, `reload`, Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import psutil
import pytest

from recomamp.config import load_config
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


def printed_commands(printed: list[str], after: str) -> list[str]:
    """The command lines of one block of the guide, continuation lines joined, comment lines left out."""
    block: list[str] = []
    started = False
    for line in printed:
        if line.startswith(after):
            started = True
            continue
        if started and not line.strip():
            break
        if started and line.startswith("  ") and not line.strip().startswith("#"):
            if block and block[-1].endswith("\\"):
                block[-1] = block[-1][:-1] + line.strip()
            else:
                block.append(line.strip())
    return block


async def bash(line: str, exports: list[str], stdin: bytes | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", "\n".join([*exports, line]),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**{k: v for k, v in os.environ.items() if k != "RECOMAMP_CONFIG"}, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(stdin), 90)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def authorize_as_printed(line: str, exports: list[str]) -> tuple[int, str]:
    """`users authorize … --paste` as a person does it: open the link it prints (the simulator's consent page,
    already told to approve), and paste the URL the browser is sent to."""
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", "\n".join([*exports, line]),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**{k: v for k, v in os.environ.items() if k != "RECOMAMP_CONFIG"}, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert process.stdout is not None
    seen = ""
    link = ""
    while not link:
        text = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert text, f"authorize ended before printing a link: {seen}"
        seen += text
        link = text.strip() if text.strip().startswith("http") else ""
    async with aiohttp.ClientSession() as session, session.get(link, allow_redirects=False) as page:
        redirected = page.headers["Location"]
    out, _ = await asyncio.wait_for(process.communicate((redirected + "\n").encode()), 60)
    assert process.returncode is not None
    return process.returncode, seen + out.decode()


@pytest.mark.timeout(240)
async def test_standalone_stays_up_serves_the_cli_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    workdir = tmp_path / "standalone"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "recomamp", "standalone", "--dir", str(workdir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        start_new_session=True,  # its own process group: the cleanup below can reach its children
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
        # Its own spool and control socket: every sandbox database starts at run 1, so nothing may be shared.
        installed = load_config(Path(config)).daemon
        assert (installed.spool_dir, Path(installed.control_socket)) == (
            workdir.resolve() / "spool",
            workdir.resolve() / "control.sock",
        )
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

        # The commands as printed, in bash, with the printed exports: a new terminal has no venv activated.
        exports = [line.strip() for line in printed if line.strip().startswith("export ")]
        assert any(e.startswith("export PATH=") for e in exports), printed
        for line in printed_commands(printed, "In another terminal:")[2:]:
            if "runs watch" in line and "run-now" not in line:
                continue  # ada's run has ended; nothing to follow
            code, out = await bash(line, exports)
            assert code in (0, 1) if line.startswith("recomamp status") else code == 0, (line, out)
            if line.startswith("recomamp reload"):
                assert out.startswith("reloaded: "), out
        recipe = printed_commands(printed, "A user of your own")
        assert recipe[-1] == "recomamp schedules run-now 2 && recomamp runs watch --schedule 2", recipe
        for line in recipe:
            if "users authorize" in line:
                code, out = await authorize_as_printed(line, exports)
                assert code == 0 and "me@example.com is authorized" in out, out
            else:
                code, out = await bash(line, exports)
                assert code == 0, (line, out)
        code, out, _ = await recomamp("runs", "list", "--schedule", "2", "--json", config=config)
        (mine,) = json.loads(out)
        assert (mine["status"], mine["step"], mine["snowflake_rows"]) == ("succeeded", "finished", 240), mine
        assert mine["snowflake_table"].endswith(".MY_RESULTS")
        # Loading it again ends where it began: succeeded, its step finished (not the load's `uploading`).
        code, out, err = await recomamp("runs", "retry-upload", str(mine["id"]), "--json", config=config)
        assert code == 0, err
        again = json.loads(out)
        assert (again["status"], again["step"], again["snowflake_rows"]) == ("succeeded", "finished", 240), again
        assert err == ""  # no daemon JSON log lines in the person's terminal
        process.send_signal(signal.SIGINT)
        rest = (await asyncio.wait_for(process.stdout.read(), 60)).decode()
        assert await asyncio.wait_for(process.wait(), 30) == 0, rest
    finally:
        if process.returncode is None:
            # A failed assertion above: stop it as a person would (Ctrl-C), so that its daemon, Postgres and
            # emulator stop too; SIGKILL only for what is left, the whole group, since a killed standalone
            # cannot stop its children and they would hold this folder's ports, socket and data.
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
    assert "stopping:" in rest
    alive = [pid for pid in started if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert alive == []
    assert not (workdir / "postgres" / "postmaster.pid").exists()  # the embedded Postgres stopped too
