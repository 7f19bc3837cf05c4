"""fakesnow's server, with one fidelity fix: a transaction conflict answers like Snowflake's lock error.

Snowflake makes a statement that needs rows another open transaction has written wait for that transaction,
and abort with error 000625 past the session's LOCK_TIMEOUT. DuckDB, under fakesnow, detects the same
conflict at once and raises `TransactionException`, which fakesnow does not map, so the client got an
HTTP 500 and retried it for its whole network timeout. Here it becomes a `ProgrammingError` 625 (SQL state
57014), as a lock timeout is in Snowflake, so the code path under test is the one Snowflake takes.

Run as `python -m recomamp.sandbox.snowflake_emulator -s -p PORT` (fakesnow's own arguments).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

LOCK_CONFLICT_ERRNO = 625


def patch_conflicts() -> None:
    import duckdb
    import snowflake.connector.errors
    from fakesnow.cursor import FakeSnowflakeCursor

    original = FakeSnowflakeCursor.execute

    @functools.wraps(original)
    def execute(self: FakeSnowflakeCursor, *args: Any, **kwargs: Any) -> FakeSnowflakeCursor:
        try:
            return original(self, *args, **kwargs)
        except duckdb.TransactionException as exc:
            raise snowflake.connector.errors.ProgrammingError(
                msg=f"Statement aborted: another transaction holds the rows it writes ({exc})",
                errno=LOCK_CONFLICT_ERRNO,
                sqlstate="57014",
            ) from None

    FakeSnowflakeCursor.execute = execute  # type: ignore[method-assign]


def main() -> int:
    import fakesnow.cli

    patch_conflicts()
    return fakesnow.cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
