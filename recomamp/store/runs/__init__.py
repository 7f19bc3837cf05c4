"""Runs in Postgres: all SQL on `schedule_runs`, one module per concern.

- `leases`: claims, the heartbeat's renewals, the fence every write passes (`LeaseLost`), retry-upload's lease;
- `steps`: a claim's fenced step writes and the run's outcome (what the pipeline's RunStore does in Postgres);
- `creation`: one statement that creates runs for fires, catch-up, run-now, backfills and reruns;
- `queries`: what operators list, show and cancel.

The names are re-exported here so that `from recomamp.store import runs as run_store` keeps serving the
CLI, the services and the tests; new code imports from the module of its concern.
"""

from __future__ import annotations

from recomamp.store.runs.creation import (
    CreatedRun,
    LeaseOnCreate,
    NewRun,
    insert_runs,
    lease_room,
)
from recomamp.store.runs.leases import (
    LeaseLost,
    RunLease,
    check_fresh,
    claim_runs,
    fenced,
    finish_upload,
    lease_for_upload,
    release_leases,
    renew_leases,
)
from recomamp.store.runs.queries import (
    active_run_for_window,
    active_runs_of_schedule,
    cancel_queued_backfill,
    cancel_run,
    failed_for_reauth,
    list_runs,
    progress,
    show_run,
    window_states,
)
from recomamp.store.runs.steps import (
    Attempt,
    RunRecord,
    begin_attempt,
    defer_run,
    expired_kept_results,
    finish_run,
    load_run,
    mark_downloaded,
    mark_submitted,
    mark_submitting,
    marker_for,
    run_state,
    set_amc_status,
    set_attempt_step,
    set_results_kept,
    set_snowflake,
    set_step,
)

__all__ = [
    "Attempt",
    "CreatedRun",
    "LeaseLost",
    "LeaseOnCreate",
    "NewRun",
    "RunLease",
    "RunRecord",
    "active_run_for_window",
    "active_runs_of_schedule",
    "begin_attempt",
    "cancel_queued_backfill",
    "cancel_run",
    "check_fresh",
    "claim_runs",
    "defer_run",
    "expired_kept_results",
    "failed_for_reauth",
    "fenced",
    "finish_run",
    "finish_upload",
    "insert_runs",
    "lease_for_upload",
    "lease_room",
    "list_runs",
    "load_run",
    "mark_downloaded",
    "mark_submitted",
    "mark_submitting",
    "marker_for",
    "progress",
    "release_leases",
    "renew_leases",
    "run_state",
    "set_amc_status",
    "set_attempt_step",
    "set_results_kept",
    "set_snowflake",
    "set_step",
    "show_run",
    "window_states",
]
