"""`python -m recomamp.sandbox.snowflake_emulator --port PORT`: the emulator in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recomamp.sandbox.snowflake_emulator", description=__doc__)
    parser.add_argument("-s", "--server", action="store_true", help="accepted for fakesnow's own command line")
    parser.add_argument("-p", "--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--statement-latency-ms", type=float, default=0.0, help="a round trip's cost per statement")
    parser.add_argument("--copy-seconds", type=float, default=0.0, help="added to every COPY INTO")
    parser.add_argument(
        "--blocking-idle-abort-seconds",
        type=float,
        default=300.0,
        help="an idle transaction that blocks a statement is aborted after this (Snowflake: 5 minutes)",
    )
    parser.add_argument(
        "--idle-abort-seconds", type=float, default=14_400.0, help="any idle transaction (Snowflake: 4 hours)"
    )
    parser.add_argument("--lock-waiter-limit", type=int, default=20, help="waiters past this get 000625 at once")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    options = arguments(sys.argv[1:] if argv is None else argv)
    import uvicorn

    from recomamp.sandbox.snowflake_emulator import parquet
    from recomamp.sandbox.snowflake_emulator.server import (
        Emulator,
        Settings,
        keep_null_timestamps,
        map_duckdb_conflicts,
    )

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    map_duckdb_conflicts()
    keep_null_timestamps()
    parquet.install()
    emulator = Emulator(
        Settings(
            statement_latency_ms=options.statement_latency_ms,
            copy_seconds=options.copy_seconds,
            blocking_idle_abort_seconds=options.blocking_idle_abort_seconds,
            idle_abort_seconds=options.idle_abort_seconds,
            lock_waiter_limit=options.lock_waiter_limit,
        )
    )
    uvicorn.run(emulator.app(), host=options.host, port=options.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
