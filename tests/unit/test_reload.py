"""A reload's merge: every restart-only key keeps its running value, every other change is applied."""

from __future__ import annotations

from pathlib import Path

from recomamp.config import RESTART_ONLY_PREFIXES, load_config
from recomamp.daemon.reload import merge
from tests.conftest import ConfigWriter


def test_restart_only_keys_keep_their_running_values_and_the_rest_applies(
    write_config: ConfigWriter, tmp_path: Path
) -> None:
    running = load_config(write_config(daemon={"replica_name": "a", "control_socket": "", "poll_interval_seconds": 5}))
    new = load_config(
        write_config(
            dsn="postgresql://u:NEWPASS@elsewhere/db",
            daemon={
                "replica_name": "b",
                "spool_dir": str(tmp_path / "other-spool"),
                "control_socket": str(tmp_path / "control.sock"),
                "poll_interval_seconds": 1,
                "max_concurrent_runs": 3,
            },
            snowflake={"thread_pool_size": 2},
            metrics={"listen": "127.0.0.1:9999", "refresh_seconds": 7},
        )
    )
    merged = merge(running, new)
    effective = merged.config
    assert effective.database == running.database
    assert effective.daemon.replica_name == "a"
    assert effective.daemon.spool_dir == running.daemon.spool_dir
    assert effective.daemon.control_socket == ""
    assert effective.snowflake.thread_pool_size == running.snowflake.thread_pool_size
    assert effective.metrics.listen == running.metrics.listen
    # Everything else is the new file's.
    assert effective.daemon.poll_interval_seconds == 1
    assert effective.daemon.max_concurrent_runs == 3
    assert effective.metrics.refresh_seconds == 7
    assert merged.applied == ["daemon.max_concurrent_runs", "daemon.poll_interval_seconds", "metrics.refresh_seconds"]
    assert merged.needs_restart == [
        "daemon.control_socket",
        "daemon.replica_name",
        "daemon.spool_dir",
        "database.dsn",
        "metrics.listen",
        "snowflake.thread_pool_size",
    ]
    # The one list: every entry of it was exercised above.
    assert {key.split(".")[0] for key in merged.needs_restart} == {p.split(".")[0] for p in RESTART_ONLY_PREFIXES}


def test_an_unchanged_config_merges_to_itself(write_config: ConfigWriter) -> None:
    running = load_config(write_config())
    merged = merge(running, load_config(write_config()))
    assert merged.config == running
    assert merged.applied == [] and merged.needs_restart == []
