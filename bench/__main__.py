"""`make bench`: the Snowflake load at 100k and 1M rows, and the scheduler at 10,000 due schedules.

Each figure is printed beside its goal, and as a ratio against a baseline measured in the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import scheduler
from recomamp.sandbox.embedded import free_port, start_fakesnow


def _load(rows: int, sandbox: str, snow_port: int) -> dict[str, Any]:
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.snowflake_load",
            "--rows",
            str(rows),
            "--sandbox",
            sandbox,
            "--snowflake-port",
            str(snow_port),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


def snowflake_load() -> bool:
    port = free_port()
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "recomamp", "sandbox", "--port", str(port), "--pending", "0", "--running", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    snow = start_fakesnow(log_path=Path(tempfile.gettempdir()) / f"recomamp-bench-fakesnow-{os.getpid()}.log")
    try:
        time.sleep(1.5)
        small = _load(100_000, f"http://127.0.0.1:{port}", snow.port)
        large = _load(1_000_000, f"http://127.0.0.1:{port}", snow.port)
    finally:
        sandbox.terminate()
        snow.stop()
    print("Snowflake load (10 columns, simulator → disk → sink → fakesnow)")
    print(
        f"  {'rows':>9}  {'load s':>7}  {'rows/s':>8}  {'PUT+COPY s':>10}  {'load/baseline':>13}  {'peak RSS MB':>11}"
    )
    for r in (small, large):
        print(
            f"  {r['rows']:>9}  {r['load_seconds']:>7}  {r['rows_per_second']:>8}  "
            f"{r['baseline_put_copy_seconds']:>10}  {r['load_vs_baseline']:>13}  {r['peak_rss_mb']:>11}"
        )
    growth = large["peak_rss_mb"] / small["peak_rss_mb"]
    goals = [
        (f"peak RSS at 1M rows < 250 MB: {large['peak_rss_mb']} MB", large["peak_rss_mb"] < 250),
        (f"peak RSS growth 100k → 1M < 1.5x: {growth:.2f}x", growth < 1.5),
        (f"load within 1.5x of bare PUT + COPY at 1M: {large['load_vs_baseline']}x", large["load_vs_baseline"] <= 1.5),
    ]
    for text, met in goals:
        print(f"  [{'met' if met else 'MISSED'}] {text}")
    return all(met for _, met in goals)


def scheduler_bench() -> bool:
    result: dict[str, Any] = scheduler.main()
    print("\nScheduler (10,000 schedules due at once, a pipeline that does nothing)")
    print(
        f"  runs created per second: {result['runs_created_per_second']} "
        f"({result['create_vs_baseline']}x a bare INSERT of the same rows: {result['baseline_insert_seconds']} s)"
    )
    print(f"  due → started lag: p50 {result['lag_p50_seconds']} s, p99 {result['lag_p99_seconds']} s")
    print(f"  all {result['runs']} runs finished in {result['daemon_seconds']} s ({result['succeeded']} succeeded)")
    print("  one poll over 100,000 schedules, none due:")
    for line in result["idle_poll_plan"]:
        print(f"    {line}")
    created = result["runs_created_per_second"] or 0
    goals = [
        (f"at least 5,000 runs created per second: {created}", float(created) >= 5000),
        (f"p99 lag under 2 s: {result['lag_p99_seconds']} s", float(result["lag_p99_seconds"]) < 2),
        (
            "the idle poll is one index scan",
            any("Index Scan using workflow_schedules_due" in str(line) for line in result["idle_poll_plan"]),
        ),
    ]
    for text, met in goals:
        print(f"  [{'met' if met else 'MISSED'}] {text}")
    return all(met for _, met in goals)


def main() -> int:
    load_ok = snowflake_load()
    scheduler_ok = scheduler_bench()
    return 0 if load_ok and scheduler_ok else 1


raise SystemExit(main())
