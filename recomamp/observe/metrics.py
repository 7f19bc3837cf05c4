"""Prometheus metrics, with the prometheus_client library (no hand-written exposition).

Each daemon has a registry of its own. Labels never carry emails, SQL or anything unbounded: an AMC
instance id, a schedule id, a status, an error kind, a step, a webhook name.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from recomamp import __version__

STEP_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)


class RunFacts(Protocol):
    @property
    def scheduled_for(self) -> datetime: ...

    @property
    def amc_instance_id(self) -> str: ...


class ScheduleFreshnessFacts(Protocol):
    @property
    def schedule_id(self) -> int: ...

    @property
    def newest_end(self) -> datetime | None: ...

    @property
    def late(self) -> bool: ...

    @property
    def missing(self) -> int: ...


class FreshnessFacts(Protocol):
    @property
    def schedules(self) -> Sequence[ScheduleFreshnessFacts]: ...

    @property
    def late(self) -> int: ...


class Metrics:
    def __init__(self) -> None:
        """Every series the daemon exports, declared here and nowhere else: long because it is the list, and a
        list read top to bottom is where an operator looks up what a series means."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Info("recomamp_build", "recomamp's version", registry=r).info({"version": __version__})
        self.runs_finished = Counter(
            "recomamp_runs_finished", "Runs that ended, by status and error kind", ["status", "error_kind"], registry=r
        )
        self.lwa_attempts = Counter(
            "recomamp_lwa_refresh_attempts",
            "Login with Amazon refresh attempts, by outcome class",
            ["outcome"],
            registry=r,
        )
        self.amc_submissions = Counter(
            "recomamp_amc_executions_submitted", "AMC executions created, per instance", ["amc_instance"], registry=r
        )
        self.rows_loaded_total = Counter("recomamp_snowflake_rows_loaded", "Rows loaded into Snowflake", registry=r)
        self.webhook_deliveries = Counter(
            "recomamp_webhook_deliveries",
            "Webhook deliveries, by target and outcome",
            ["target", "outcome"],
            registry=r,
        )
        self.step_seconds = Histogram(
            "recomamp_run_step_seconds", "Time a run spent in each step", ["step"], buckets=STEP_BUCKETS, registry=r
        )
        self.start_lag = Histogram(
            "recomamp_run_start_lag_seconds", "From a run's due time to its first step", buckets=LAG_BUCKETS, registry=r
        )
        self.in_flight = Gauge(
            "recomamp_runs_in_flight", "Runs this replica works on, per instance", ["amc_instance"], registry=r
        )
        self.quota = Gauge(
            "recomamp_amc_quota_used",
            "AMC ad-hoc executions in the current quota window, per instance",
            ["amc_instance"],
            registry=r,
        )
        self.quota_limit = Gauge("recomamp_amc_quota_limit", "AMC ad-hoc executions allowed per window", registry=r)
        self.users_reauth = Gauge("recomamp_users_needing_reauth", "Users who must re-authenticate", registry=r)
        self.paused = Gauge("recomamp_schedules_paused", "Schedules that are paused", registry=r)
        self.auto_paused = Gauge("recomamp_schedules_auto_paused", "Schedules paused after failures", registry=r)
        self.oldest_due = Gauge(
            "recomamp_oldest_due_unclaimed_seconds", "Age of the oldest runnable run nobody holds", registry=r
        )
        self.since_success = Gauge(
            "recomamp_schedule_seconds_since_success",
            "Seconds since each active schedule's last successful run",
            ["schedule_id"],
            registry=r,
        )
        self.cadence = Gauge(
            "recomamp_schedule_cadence_seconds",
            "Each active schedule's usual time between fires",
            ["schedule_id"],
            registry=r,
        )
        # Freshness: per schedule only what an operator alerts on (three series each), the rest fleet-wide.
        self.newest_window_end = Gauge(
            "recomamp_schedule_newest_window_end_timestamp_seconds",
            "The end of each active schedule's newest loaded window (Unix time; absent: nothing loaded yet)",
            ["schedule_id"],
            registry=r,
        )
        self.missing_windows = Gauge(
            "recomamp_schedule_missing_windows",
            "Each active schedule's windows fired in the last 14 days without a successful run or one in flight",
            ["schedule_id"],
            registry=r,
        )
        self.schedule_late = Gauge(
            "recomamp_schedule_late",
            "1 when an active schedule's newer data is overdue past its grace",
            ["schedule_id"],
            registry=r,
        )
        self.schedules_late = Gauge("recomamp_schedules_late", "Active schedules whose data is late", registry=r)
        self.database_up = Gauge("recomamp_database_up", "1 when the database answered last time", registry=r)
        self.kept_results = Gauge("recomamp_kept_results_bytes", "Result files kept under the spool", registry=r)
        self.outbox_pending = Gauge("recomamp_notifications_pending", "Alerts not yet delivered", registry=r)
        self._in_flight_counts: dict[str, int] = {}

    # --- what the pipeline reports ------------------------------------------------------------------------

    def run_started(self, run: RunFacts, started_at: datetime) -> None:
        self.start_lag.observe(max(0.0, (started_at - run.scheduled_for).total_seconds()))
        key = run.amc_instance_id
        self._in_flight_counts[key] = self._in_flight_counts.get(key, 0) + 1
        self.in_flight.labels(key).set(self._in_flight_counts[key])

    def run_finished(self, run: RunFacts, status: str, error_kind: str | None) -> None:
        self.runs_finished.labels(status, error_kind or "").inc()

    def run_left(self, instance: str) -> None:
        self._in_flight_counts[instance] = max(0, self._in_flight_counts.get(instance, 1) - 1)
        self.in_flight.labels(instance).set(self._in_flight_counts[instance])

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.step_seconds.labels(name).observe(time.monotonic() - started)

    def amc_submitted(self, run: RunFacts) -> None:
        self.amc_submissions.labels(run.amc_instance_id).inc()

    def quota_used(self, instance_key: str, used: int) -> None:
        self.quota.labels(instance_key).set(used)

    def rows_loaded(self, rows: int) -> None:
        self.rows_loaded_total.inc(rows)

    def lwa_attempt(self, outcome: str) -> None:
        self.lwa_attempts.labels(outcome).inc()

    def webhook_delivery(self, target: str, outcome: str) -> None:
        self.webhook_deliveries.labels(target, outcome).inc()

    # --- gauges read from the database ----------------------------------------------------------------------

    def set_database_gauges(self, snapshot: dict[str, Any], quota_limit: int) -> None:
        self.users_reauth.set(snapshot["users_needing_reauth"])
        self.paused.set(snapshot["paused_schedules"])
        self.auto_paused.set(snapshot["auto_paused_schedules"])
        self.oldest_due.set(snapshot["oldest_due_seconds"] or 0)
        self.quota_limit.set(quota_limit)
        for instance, used in snapshot["quota"].items():
            self.quota.labels(instance).set(used)
        self.since_success.clear()
        self.cadence.clear()
        for row in snapshot["schedules"]:
            if row["seconds_since_success"] is not None:
                self.since_success.labels(str(row["id"])).set(row["seconds_since_success"])
            if row["cadence_seconds"]:
                self.cadence.labels(str(row["id"])).set(row["cadence_seconds"])
        self.kept_results.set(snapshot.get("kept_results_bytes") or 0)
        self.outbox_pending.set(snapshot.get("notifications_pending") or 0)

    def set_freshness_gauges(self, fleet: FreshnessFacts) -> None:
        self.newest_window_end.clear()
        self.missing_windows.clear()
        self.schedule_late.clear()
        for schedule in fleet.schedules:
            key = str(schedule.schedule_id)
            if schedule.newest_end is not None:
                self.newest_window_end.labels(key).set(schedule.newest_end.timestamp())
            self.missing_windows.labels(key).set(schedule.missing)
            self.schedule_late.labels(key).set(1 if schedule.late else 0)
        self.schedules_late.set(fleet.late)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
