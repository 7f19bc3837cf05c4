"""The Snowflake emulator the tests, the demo and the bench load into: fakesnow's server (DuckDB underneath)
behind a front that locks, commits, aborts, reads Parquet and costs as Snowflake documents
(../shared/SNOWFLAKE_NOTES.md). `server.py` says what it adds and what it leaves as fakesnow has it.

Run as `python -m recomamp.sandbox.snowflake_emulator --port PORT [--statement-latency-ms N] …`.
"""
