"""`make demo` end to end: embedded Postgres, the simulator, fakesnow, the daemon as a child process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from recomamp.cli.sandbox import show_demo_runs
from recomamp.sandbox.demo import run_demo


@pytest.mark.timeout(120)
async def test_the_demo_runs_and_reports_the_expected_outcome(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await asyncio.to_thread(run_demo, tmp_path / "demo", show_demo_runs) == 0
    out = capsys.readouterr().out
    assert "as expected" in out
    assert "User needs to re-authenticate via Amazon OAuth" in out
    assert "ANALYTICS.AMC_ADA.DAILY_CAMPAIGN_TRAFFIC" in out
    # The daemon's own log is JSON, and carries no secret.
    log = (tmp_path / "demo" / "daemon.log").read_text()
    assert "token_refresh_attempt_failed" in log
    assert "demo-password" not in log and "Atzr|" not in log and "Atza|" not in log
