"""The daemon: supervised background tasks around the run pipeline.

Named tasks, each watched by the supervisor; if one dies, the daemon logs why and exits non-zero so
that systemd restarts it:
- poller: claims due schedules into runs, every poll interval or when NOTIFY wakes it;
- dispatcher: leases runnable runs within the shared limits and starts one coroutine per run;
- heartbeat: renews the leases of runs in flight, and stops runs whose lease another replica took;
- listener: LISTENs for `recomamp schedules run-now`.

SIGTERM/SIGINT: stop claiming, let runs finish for up to the drain timeout, release the leases of the
rest (the next start continues them), log one summary line. A second signal exits at once.
SIGHUP: read and validate the config; keep the old one on error; otherwise apply what can be applied
live and name the keys that need a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import asyncpg

from recomamp.config import Config, ConfigError, changed_keys, load_config, restart_only
from recomamp.daemon.pipeline import RunOutcome, RunPipeline, Services
from recomamp.daemon.services import amc_policy, open_services, token_policy
from recomamp.logs import get_logger, set_level
from recomamp.store import migrations
from recomamp.store.db import create_pool
from recomamp.store.runs import claim_runs, release_leases, renew_leases
from recomamp.store.schedules import WAKEUP_CHANNEL, claim_all_due
from recomamp.systemd import Notifier, watchdog_interval_seconds

log = get_logger(__name__)


class Pipeline(Protocol):
    async def execute(self, run_id: int) -> RunOutcome: ...


class PipelineFactory(Protocol):
    """Builds the per-run pipeline. The benchmarks hand in one that does nothing."""

    def __call__(self, services: Services, owner: str, config: Callable[[], Config], *, once: bool) -> Pipeline: ...


class DaemonError(Exception):
    """The daemon cannot start: the message says what to fix."""


@dataclass
class Tally:
    succeeded: int = 0
    failed: int = 0
    deferred: int = 0
    other: int = 0
    outcomes: list[RunOutcome] = field(default_factory=list)

    def add(self, outcome: RunOutcome) -> None:
        self.outcomes.append(outcome)
        if outcome.status == "succeeded":
            self.succeeded += 1
        elif outcome.status in ("failed", "cancelled"):
            self.failed += 1
        elif outcome.status == "deferred":
            self.deferred += 1
        else:
            self.other += 1


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        once: bool = False,
        notifier: Notifier | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        pipeline_factory: PipelineFactory | None = None,
    ) -> None:
        self._config = config
        self._config_path = config_path
        self._once = once
        self._notifier = notifier or Notifier()
        self._clock = clock
        self._pipeline_factory: PipelineFactory = pipeline_factory or RunPipeline
        self._owner = config.daemon.replica_name
        self._runs: dict[int, asyncio.Task[RunOutcome]] = {}
        self._tally = Tally()
        self._stopping = asyncio.Event()
        self._wake_poller = asyncio.Event()
        self._wake_dispatcher = asyncio.Event()
        self._signals = 0

    @property
    def config(self) -> Config:
        return self._config

    # --- start-up ------------------------------------------------------------------------------------

    async def run(self) -> int:
        config = self._config
        try:
            pool = await create_pool(config.database)
        except (OSError, asyncpg.PostgresError) as exc:
            raise DaemonError(f"cannot reach the database in [database] dsn: {type(exc).__name__}: {exc}") from exc
        try:
            async with pool.acquire() as connection:
                pending = await migrations.pending_versions(connection)
            if pending:
                raise DaemonError(
                    f"the database schema is behind: migrations {pending} are pending. Run `recomamp migrate up`."
                )
            async with open_services(config, pool) as services:
                self._services = services
                self._pipeline = self._pipeline_factory(services, self._owner, lambda: self._config, once=self._once)
                self._install_signals()
                return await (self._run_once() if self._once else self._serve())
        finally:
            await pool.close()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        if not self._once:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))

    def _on_stop_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second_signal_exit_now", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("stop_requested", signal=signal.Signals(signum).name)
        self.request_stop()

    def request_stop(self) -> None:
        """Stop claiming, drain, and return from run(): what SIGTERM does."""
        self._stopping.set()
        self._wake_poller.set()
        self._wake_dispatcher.set()

    # --- runs ----------------------------------------------------------------------------------------

    def _start_run(self, run_id: int) -> None:
        task = asyncio.create_task(self._pipeline.execute(run_id), name=f"run-{run_id}")
        self._runs[run_id] = task

        def done(finished: asyncio.Task[RunOutcome]) -> None:
            self._runs.pop(run_id, None)
            if not finished.cancelled():
                if finished.exception() is not None:
                    log.error(
                        "run_crashed",
                        run_id=run_id,
                        exc_info=finished.exception(),
                        detail="its lease expires and another claim continues it",
                    )
                    self._tally.other += 1
                else:
                    self._tally.add(finished.result())
            self._wake_dispatcher.set()
            self._notifier.status(f"{len(self._runs)} runs in flight")

        task.add_done_callback(done)

    async def _claim_runs(self) -> list[int]:
        config = self._config
        room = config.daemon.max_concurrent_runs - len(self._runs)
        async with self._services.pool.acquire() as connection:
            run_ids = await claim_runs(
                connection,
                owner=self._owner,
                lease_seconds=config.daemon.lease_seconds,
                max_global=config.daemon.max_concurrent_runs,
                max_per_instance=config.daemon.max_runs_per_instance,
                limit=room,
            )
        for run_id in run_ids:
            self._start_run(run_id)
        if run_ids:
            self._notifier.status(f"{len(self._runs)} runs in flight")
        return run_ids

    async def _claim_due(self) -> int:
        async with self._services.pool.acquire() as connection:
            outcome = await claim_all_due(connection, self._clock(), self._config.daemon.claim_batch_size)
        if outcome.runs_created:
            log.info(
                "due_schedules_claimed",
                schedules=outcome.schedules,
                runs_created=outcome.runs_created,
                fires_skipped=outcome.fires_skipped,
            )
        return outcome.runs_created

    # --- --once --------------------------------------------------------------------------------------

    async def _run_once(self) -> int:
        await self._claim_due()
        self._notifier.ready("running due schedules once")
        while not self._stopping.is_set():
            claimed = await self._claim_runs()
            if not claimed and not self._runs:
                break
            self._wake_dispatcher.clear()
            if self._runs:
                await self._wait(self._wake_dispatcher, self._config.daemon.poll_interval_seconds)
        await self._drain()
        return 0 if self._tally.failed == 0 and self._tally.other == 0 else 1

    # --- the long-running daemon ---------------------------------------------------------------------

    async def _serve(self) -> int:
        tasks = {
            asyncio.create_task(self._loop("poll_failed", self._poll_once, self._wake_poller), name="poller"),
            asyncio.create_task(
                self._loop("dispatch_failed", self._dispatch_once, self._wake_dispatcher), name="dispatcher"
            ),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
            asyncio.create_task(self._listen(), name="listener"),
        }
        stop = asyncio.create_task(self._stopping.wait(), name="stop-signal")
        self._notifier.ready(f"replica {self._owner}")
        log.info("daemon_ready", replica=self._owner, max_concurrent_runs=self._config.daemon.max_concurrent_runs)
        done, _ = await asyncio.wait({*tasks, stop}, return_when=asyncio.FIRST_COMPLETED)
        exit_code = 0
        for task in done:
            if task is stop:
                continue
            error = task.exception() if not task.cancelled() else None
            if error is None and self._stopping.is_set():
                continue  # it saw the stop request first and returned: a clean exit
            # A background task ended on its own: that is a bug or a lost dependency. Exit non-zero.
            log.error(
                "background_task_died", task=task.get_name(), exc_info=error, detail="exiting so systemd restarts"
            )
            exit_code = 1
        self._stopping.set()
        for task in (*tasks, stop):
            task.cancel()
        await asyncio.gather(*tasks, stop, return_exceptions=True)
        await self._drain()
        return exit_code

    async def _wait(self, event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    async def _loop(self, failure_event: str, step: Callable[[], Awaitable[None]], wake: asyncio.Event) -> None:
        failures = 0
        while not self._stopping.is_set():
            wake.clear()
            try:
                await step()
                failures = 0
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                # The database blinked: keep trying. The watchdog is fed only on progress, so a
                # database that stays away gets the daemon restarted by systemd.
                failures += 1
                log.error(failure_event, error=str(exc), exception_class=type(exc).__name__, failures=failures)
            interval = self._config.daemon.poll_interval_seconds
            watchdog = watchdog_interval_seconds()
            await self._wait(wake, min(interval, watchdog) if watchdog else interval)

    async def _poll_once(self) -> None:
        if await self._claim_due():
            self._wake_dispatcher.set()
        self._notifier.watchdog()

    async def _dispatch_once(self) -> None:
        await self._claim_runs()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._config.daemon.heartbeat_interval_seconds)
            run_ids = list(self._runs)
            if not run_ids:
                continue
            try:
                renewed = await renew_leases(
                    self._services.pool, self._owner, run_ids, self._config.daemon.lease_seconds
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("heartbeat_failed", error=str(exc), exception_class=type(exc).__name__)
                continue
            for run_id in set(run_ids) - renewed:
                task = self._runs.get(run_id)
                if task is not None and not task.done():
                    log.warning("run_lease_lost", run_id=run_id, detail="another replica adopted it; stopping ours")
                    task.cancel()

    async def _listen(self) -> None:
        """LISTEN for run-now. Reconnects on its own when the connection drops."""
        while True:
            try:
                connection = await asyncpg.connect(self._config.database.dsn.get_secret_value())
            except (OSError, asyncpg.PostgresError) as exc:
                log.error("listener_connect_failed", error=str(exc))
                await asyncio.sleep(self._config.daemon.poll_interval_seconds)
                continue
            closed = asyncio.Event()
            connection.add_termination_listener(lambda _, event=closed: event.set())
            try:
                await connection.add_listener(WAKEUP_CHANNEL, self._on_notify)
                await closed.wait()
                log.warning("listener_connection_lost", detail="reconnecting")
            finally:
                with contextlib.suppress(Exception):
                    await connection.close()

    def _on_notify(self, *_: object) -> None:
        self._wake_poller.set()
        self._wake_dispatcher.set()

    # --- shutdown ------------------------------------------------------------------------------------

    async def _drain(self) -> None:
        self._notifier.stopping()
        in_flight = list(self._runs.values())
        timeout = self._config.daemon.drain_timeout_seconds
        if in_flight and self._stopping.is_set():
            # A stop request (SIGTERM, or the daemon itself failing): runs get the drain timeout, no more.
            log.info("draining", runs_in_flight=len(in_flight), drain_timeout_seconds=timeout)
            await asyncio.wait(in_flight, timeout=timeout)
        elif in_flight:
            await asyncio.wait(in_flight)  # --once, finishing what it started
        unfinished = {run_id: task for run_id, task in self._runs.items() if not task.done()}
        for task in unfinished.values():
            task.cancel()
        await asyncio.gather(*unfinished.values(), return_exceptions=True)
        leftover = list(unfinished)
        if leftover:
            # Their state is persisted step by step: the next claim, here or elsewhere, continues them.
            await release_leases(self._services.pool, self._owner, leftover)
        tally = self._tally
        log.info(
            "shutdown_complete",
            summary=f"{tally.succeeded} runs succeeded, {tally.failed} failed, {tally.deferred} deferred, "
            f"{len(leftover)} released for the next start",
            succeeded=tally.succeeded,
            failed=tally.failed,
            deferred=tally.deferred,
            released=len(leftover),
        )

    @property
    def tally(self) -> Tally:
        return self._tally

    # --- reload --------------------------------------------------------------------------------------

    async def reload(self) -> bool:
        """SIGHUP. Returns whether a new config was applied."""
        if self._config_path is None:
            log.warning("config_reload_skipped", reason="the daemon was started without a config file")
            return False
        self._notifier.reloading()
        try:
            try:
                new = await asyncio.to_thread(load_config, self._config_path)
            except ConfigError as exc:
                log.error("config_reload_failed", problems=exc.problems, detail="keeping the running config")
                return False
            old = self._config
            keys = changed_keys(old, new)
            needs_restart = restart_only(keys)
            # Keys that need a restart keep their running values: nothing is half-applied.
            effective = new.model_copy(
                update={
                    "database": old.database,
                    "security": old.security,
                    "daemon": new.daemon.model_copy(update={"replica_name": old.daemon.replica_name}),
                    "snowflake": new.snowflake.model_copy(update={"thread_pool_size": old.snowflake.thread_pool_size}),
                }
            )
            self._config = effective
            self._services.tokens.reconfigure(token_policy(effective))
            self._services.amc.reconfigure(amc_policy(effective))
            self._services.sink.reconfigure(effective.snowflake, effective.retry)
            set_level(effective.logging.level)
            log.info(
                "config_reloaded",
                changed_keys=[key for key in keys if key not in needs_restart],
                needs_restart=needs_restart,
            )
            self._wake_poller.set()
            self._wake_dispatcher.set()
            return True
        finally:
            self._notifier.ready()
