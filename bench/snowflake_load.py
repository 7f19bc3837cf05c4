"""Snowflake load benchmark, one size per process (so peak RSS is this size's own).

Downloads an N-row, 10-column result from the simulator (served by another process), then loads it
through the sink into fakesnow. Baseline, in the same process and run: a bare PUT + COPY of the same
files into a table of text columns, with nothing else (no inference, no batching, no upsert).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import resource
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from recomamp.amazon.client import AmcClient
from recomamp.amazon.matching import ExecutionRequest
from recomamp.amazon.transport import AmcRetryPolicy, AmcTarget
from recomamp.config import RetrySettings, SnowflakeSettings
from recomamp.logs import configure_logging
from recomamp.snowflake.connection import SnowflakeConnectionSpec
from recomamp.snowflake.loader import LoadTarget, RunMetadata
from recomamp.snowflake.sink import SnowflakeSink

# The production defaults, but for the timeouts.
SETTINGS = SnowflakeSettings(login_timeout_seconds=30, network_timeout_seconds=600)


async def _download(sandbox: str, rows: int, directory: Path) -> list[Path]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sandbox}/_sandbox/instances/bench", json={"rows": rows, "files": 4}) as response:
            response.raise_for_status()
        async with http.post(f"{sandbox}/_sandbox/users", json={"email": f"{uuid.uuid4().hex}@bench"}) as response:
            refresh = (await response.json())["refresh_token"]
        async with http.post(
            f"{sandbox}/auth/o2/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh,
                "client_id": "amzn1.application-oa2-client.sandbox",
                "client_secret": "sandbox-client-secret",
            },
        ) as response:
            token = str((await response.json())["access_token"])

        async def tokens(stale: str | None = None) -> str:
            return token

        client = AmcClient(
            http,
            client_id="amzn1.application-oa2-client.sandbox",
            policy=AmcRetryPolicy(3, (0.1,), 1, 0.05, 0.2, 1.5, 600),
        )
        target = AmcTarget(sandbox, "bench", "E", "M")
        request = ExecutionRequest(datetime(2026, 1, 1), datetime(2026, 2, 1), "UTC", sql_query="SELECT 1")
        execution = await client.executions.create(target, tokens, request, marker="bench")
        await client.executions.wait_until_terminal(target, tokens, execution.execution_id)
        files = await client.results.download(target, tokens, execution.execution_id, directory / "result")
        return list(files.paths)


def _baseline(spec: SnowflakeConnectionSpec, files: list[Path], database: str) -> float:
    with gzip.open(files[0], "rt") as handle:
        header = handle.readline().strip().split(",")
    started = time.perf_counter()
    connection = spec.connect(SETTINGS)
    try:
        cursor = connection.cursor()
        cursor.execute(f'CREATE SCHEMA IF NOT EXISTS "{database}"."BASE"')
        cursor.execute(f'USE SCHEMA "{database}"."BASE"')
        cursor.execute("CREATE TEMPORARY STAGE BASE_STAGE")
        columns = ", ".join(f'"{c.upper()}" VARCHAR' for c in header)
        cursor.execute(f"CREATE TABLE BASE_TABLE ({columns})")
        for path in files:
            cursor.execute(f"PUT file://{path} @BASE_STAGE/all/ AUTO_COMPRESS=FALSE")
        cursor.execute(
            "COPY INTO BASE_TABLE FROM @BASE_STAGE/all/ FILE_FORMAT=(TYPE=CSV SKIP_HEADER=1 "
            "FIELD_OPTIONALLY_ENCLOSED_BY='\"' EMPTY_FIELD_AS_NULL=TRUE COMPRESSION=GZIP) PURGE=TRUE"
        )
    finally:
        connection.close()
    return time.perf_counter() - started


async def run(rows: int, sandbox: str, snow_port: int) -> dict[str, Any]:
    database = f"BENCH_{uuid.uuid4().hex[:8].upper()}"
    spec = SnowflakeConnectionSpec(
        account="bench",
        user="BENCH",
        password=SecretStr("bench-password"),
        database=database,
        default_schema="AMC",
        host="127.0.0.1",
        port=snow_port,
        protocol="http",
    )
    connection = spec.connect(SETTINGS)
    connection.cursor().execute(f'CREATE DATABASE IF NOT EXISTS "{database}"')
    connection.close()
    with tempfile.TemporaryDirectory(prefix="recomamp-bench-") as directory:
        started = time.perf_counter()
        files = await _download(sandbox, rows, Path(directory))
        download_seconds = time.perf_counter() - started
        sink = SnowflakeSink(SETTINGS, RetrySettings(snowflake_waits=(0.5,)))
        started = time.perf_counter()
        result = await sink.load(
            spec,
            LoadTarget(database, "AMC", "RESULTS"),
            RunMetadata(1, 1, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC), datetime.now(UTC)),
            files,
        )
        load_seconds = time.perf_counter() - started
        await sink.close(5)
        # Read before the baseline runs in this process: the peak so far is the download's and the load's.
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        baseline_seconds = await asyncio.to_thread(_baseline, spec, files, database)
    return {
        "rows": result.rows,
        "batches": result.batches,
        "download_seconds": round(download_seconds, 2),
        "load_seconds": round(load_seconds, 2),
        "rows_per_second": round(result.rows / load_seconds),
        "baseline_put_copy_seconds": round(baseline_seconds, 2),
        "load_vs_baseline": round(load_seconds / baseline_seconds, 2),
        "peak_rss_mb": round(peak_rss_mb, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--sandbox", required=True)
    parser.add_argument("--snowflake-port", type=int, required=True)
    args = parser.parse_args()
    configure_logging("warning")
    print(json.dumps(asyncio.run(run(args.rows, args.sandbox, args.snowflake_port))))


if __name__ == "__main__":
    main()
