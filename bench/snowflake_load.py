"""Snowflake load benchmark: one variant and size per process, so each peak RSS is that load's own.

`--download DIR`: fetch an N-row, 10-column result from the simulator (served by another process) into DIR.
`--variant V --files DIR`: load those files into fakesnow and print one JSON object. Variants:
- replace: recomamp's sink, the window replace (DELETE + COPY in one transaction);
- merge:   recomamp's sink with key columns, the issue's "MERGE variant" (an upsert on the keys: DELETE of
           the keys the run brings + COPY, in one transaction);
- seed:    what the seed application does, the path `write_pandas` takes: pandas reads the whole result,
           writes one Parquet file, PUT, COPY into a staging table, MERGE into the target;
- bare:    the floor: a PUT + COPY of recomamp's own staged Parquet file (made beforehand, untimed) into a
           table of the result's types, with nothing else (no inference, no upsert, no time-series columns).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
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
from recomamp.sandbox.results_data import RESULT_SCHEMA
from recomamp.snowflake.connection import SnowflakeConnectionSpec
from recomamp.snowflake.loader import LoadTarget, RunMetadata
from recomamp.snowflake.sink import SnowflakeSink
from recomamp.snowflake.staging import SEQ_COLUMN, TypeTracker, read_batches, result_columns, result_header, stage_files

# The production defaults, but for the timeouts.
SETTINGS = SnowflakeSettings(login_timeout_seconds=30, network_timeout_seconds=600)
KEYS = ("event_date", "campaign_id")
VARIANTS = ("replace", "merge", "seed", "bare")


async def download(sandbox: str, rows: int, directory: Path) -> list[Path]:
    async with aiohttp.ClientSession() as http:
        instance = f"bench{uuid.uuid4().hex[:6]}"
        async with http.post(f"{sandbox}/_sandbox/instances/{instance}", json={"rows": rows, "files": 4}) as response:
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
        target = AmcTarget(sandbox, instance, "E", "M")
        request = ExecutionRequest(datetime(2026, 1, 1), datetime(2026, 2, 1), "UTC", sql_query="SELECT 1")
        execution = await client.executions.create(target, tokens, request, marker="bench")
        await client.executions.wait_until_terminal(target, tokens, execution.execution_id)
        files = await client.results.download(target, tokens, execution.execution_id, directory)
        return list(files.paths)


def _spec(snow_port: int, database: str) -> SnowflakeConnectionSpec:
    return SnowflakeConnectionSpec(
        account="bench",
        user="BENCH",
        password=SecretStr("bench-password"),
        database=database,
        default_schema="AMC",
        host="127.0.0.1",
        port=snow_port,
        protocol="http",
    )


def _cursor(spec: SnowflakeConnectionSpec, query_tag: str = "bench") -> tuple[Any, Any]:
    """`query_tag`: whose statements the emulator's account counts them as (the bench's own set-up: "bench")."""
    connection = spec.connect(SETTINGS, query_tag)
    cursor = connection.cursor()
    cursor.execute(f'CREATE DATABASE IF NOT EXISTS "{spec.database}"')
    cursor.execute(f'CREATE SCHEMA IF NOT EXISTS "{spec.database}"."AMC"')
    cursor.execute(f'USE SCHEMA "{spec.database}"."AMC"')
    return connection, cursor


async def recomamp_load(spec: SnowflakeConnectionSpec, files: list[Path], *, merge: bool) -> int:
    sink = SnowflakeSink(SETTINGS, RetrySettings(snowflake_waits=(0.5,)))
    result = await sink.load(
        spec,
        LoadTarget(spec.database, "AMC", "RESULTS", key_columns=KEYS if merge else None),
        RunMetadata(1, 1, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC), datetime.now(UTC)),
        files,
        declared_types={name: data_type for name, data_type, _ in RESULT_SCHEMA},
    )
    await sink.close(5)
    return result.rows


_PANDAS_TO_SNOWFLAKE = {"int64": "NUMBER(38,0)", "float64": "FLOAT", "bool": "BOOLEAN"}


def seed_load(spec: SnowflakeConnectionSpec, files: list[Path]) -> int:
    """The seed's path: the whole result in a DataFrame, one Parquet file, PUT, COPY, MERGE."""
    import pandas as pd

    frame = pd.concat([pd.read_csv(path) for path in files], ignore_index=True)
    frame.columns = [str(c).upper() for c in frame.columns]
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    types = {c: _PANDAS_TO_SNOWFLAKE.get(str(t), "VARCHAR") for c, t in frame.dtypes.items()}
    columns = ", ".join(f'"{c}" {t}' for c, t in types.items())
    connection, cursor = _cursor(spec, "seed")
    try:
        cursor.execute("CREATE TEMPORARY STAGE SEED_STAGE")
        # write_pandas COPYs into a temporary table; fakesnow's COPY does not see temporary tables.
        cursor.execute(f"CREATE TRANSIENT TABLE SEED_STAGING ({columns})")
        cursor.execute(f"CREATE TABLE IF NOT EXISTS SEED_RESULTS ({columns})")
        buffer.seek(0)
        cursor.execute("PUT file://seed.parquet @SEED_STAGE/ AUTO_COMPRESS=FALSE", file_stream=buffer)
        cursor.execute(
            "COPY INTO SEED_STAGING FROM @SEED_STAGE/ FILE_FORMAT=(TYPE=PARQUET) "
            "MATCH_BY_COLUMN_NAME=CASE_INSENSITIVE PURGE=TRUE"
        )
        keys = [k.upper() for k in KEYS]
        matches = " AND ".join(f't."{k}" = s."{k}"' for k in keys)
        updates = ", ".join(f'"{c}" = s."{c}"' for c in types if c not in keys)
        names = ", ".join(f'"{c}"' for c in types)
        values = ", ".join(f's."{c}"' for c in types)
        cursor.execute(
            f"MERGE INTO SEED_RESULTS AS t USING SEED_STAGING AS s ON {matches} "
            f"WHEN MATCHED THEN UPDATE SET {updates} WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})"
        )
        cursor.execute("DROP TABLE SEED_STAGING")
    finally:
        connection.close()
    return len(frame)


def staged_files(files: list[Path], directory: Path) -> tuple[list[Path], dict[str, str]]:
    """recomamp's own staged files, as the sink makes them (untimed), and a Snowflake type for each column."""
    header = result_header(files)
    columns = result_columns(header)
    tracker = TypeTracker(columns, {name: data_type for name, data_type, _ in RESULT_SCHEMA})
    staged = list(stage_files(read_batches(files, header, columns, SETTINGS.batch_rows), tracker, directory))
    types = {name: column_type.sql() for name, column_type in tracker.types.items()}
    return [s.path for s in staged], {SEQ_COLUMN: "NUMBER(38,0)", **types}


def bare_load(spec: SnowflakeConnectionSpec, staged: list[Path], types: dict[str, str]) -> None:
    connection, cursor = _cursor(spec)
    try:
        cursor.execute("CREATE TEMPORARY STAGE BARE_STAGE")
        definitions = ", ".join(f'"{c}" {t}' for c, t in types.items())
        cursor.execute(f"CREATE TRANSIENT TABLE BARE_TABLE ({definitions})")
        for path in staged:
            cursor.execute(f"PUT file://{path} @BARE_STAGE/all/ AUTO_COMPRESS=FALSE")
        cursor.execute(
            # The floor COPYs recomamp's own files as recomamp does (their timestamps need logical types).
            "COPY INTO BARE_TABLE FROM @BARE_STAGE/all/ FILE_FORMAT=(TYPE=PARQUET USE_LOGICAL_TYPE=TRUE) "
            "MATCH_BY_COLUMN_NAME=CASE_INSENSITIVE PURGE=TRUE"
        )
    finally:
        connection.close()


def memory_mb() -> tuple[float, float]:
    """This process's resident memory now and at its peak (VmRSS, VmHWM). Not getrusage's ru_maxrss: Linux
    carries that across fork and exec, so a child started by a 170 MB parent reads 170 MB before it does
    anything (measured: 169.6 MB from the bench's parent, 140.4 MB from a bare one, for the same load)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def run_variant(variant: str, files: list[Path], snow_port: int, database: str | None = None) -> dict[str, Any]:
    """`database`: load into it and keep it (a second load then meets an existing table), else a fresh one."""
    spec = _spec(snow_port, database or f"BENCH_{uuid.uuid4().hex[:8].upper()}")
    connection, _ = _cursor(spec)  # the database exists before the clock starts
    connection.close()
    with tempfile.TemporaryDirectory(prefix="recomamp-bench-") as directory:
        staged, types = staged_files(files, Path(directory)) if variant == "bare" else ([], {})
        baseline_rss = memory_mb()[0]
        started = time.perf_counter()
        if variant == "seed":
            rows = seed_load(spec, files)
        elif variant == "bare":
            bare_load(spec, staged, types)
            rows = -1
        else:
            rows = asyncio.run(recomamp_load(spec, files, merge=variant == "merge"))
        seconds = time.perf_counter() - started
    peak = memory_mb()[1]
    if database is None:
        # Untimed: the emulator keeps every database in memory, and a fuller emulator is a slower one.
        connection, cursor = _cursor(spec)
        cursor.execute(f'DROP SCHEMA IF EXISTS "{spec.database}"."AMC" CASCADE')
        connection.close()
    return {
        "variant": variant,
        "rows": rows,
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(peak, 1),
        "rss_before_mb": round(baseline_rss, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int)
    parser.add_argument("--sandbox")
    parser.add_argument("--download", type=Path, metavar="DIR")
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--files", type=Path, metavar="DIR")
    parser.add_argument("--snowflake-port", type=int)
    parser.add_argument("--database", help="load into this database and keep it")
    args = parser.parse_args()
    configure_logging("warning")
    if args.download:
        paths = asyncio.run(download(args.sandbox, args.rows, args.download))
        print(json.dumps([str(p) for p in paths]))
        return
    files = sorted(args.files.glob("part-*.csv.gz"))
    print(json.dumps(run_variant(args.variant, files, args.snowflake_port, args.database)))


if __name__ == "__main__":
    main()
