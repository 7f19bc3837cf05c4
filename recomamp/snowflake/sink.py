"""The async face of the Snowflake write: loads run in worker threads, never on the event loop.

- At most [snowflake] thread_pool_size loads run at once. Each runs on a daemon thread of its own, so a
  load hung in the connector can never hold the process at exit.
- Each load has a deadline ([snowflake] load_timeout_seconds). Past it, the caller gets
  `LoadTimedOut` at once, and the thread is told to stop: it runs no further statement and its fence
  refuses the commit, so a late thread never writes after the run gave the load up.
- The fence (the run's lease check) is awaited on the event loop from the loading thread, inside the
  transaction, immediately before the commit.
- Each load carries the caller's contextvars (the structlog context: user, schedule, run, attempt)
  into its thread, so its log lines say whose load it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import queue
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from recomamp.config import RetrySettings, SnowflakeSettings
from recomamp.logs import get_logger
from recomamp.snowflake.connection import SnowflakeConnectionSpec
from recomamp.snowflake.loader import (
    LoadCancelled,
    Loader,
    LoadPolicy,
    LoadResult,
    LoadTarget,
    RunMetadata,
    StatementHook,
)
from recomamp.snowflake.staging import configure_arrow_memory

log = get_logger(__name__)

T = TypeVar("T")

FENCE_TIMEOUT_SECONDS = 60.0
# An adopted run's look for what its earlier claims left open: a login and two statements.
STALE_CLAIM_CHECK_SECONDS = 120.0


class LoadTimedOut(Exception):
    """The load passed its deadline and was cut off; nothing is committed after this."""


class SnowflakeSink:
    def __init__(
        self,
        settings: SnowflakeSettings,
        retry: RetrySettings,
        *,
        after_statement: StatementHook | None = None,
    ) -> None:
        self._settings = settings
        self._retry = retry
        # Arrow works in this process only to stage loads: its allocator is chosen for that, once.
        configure_arrow_memory()
        self._after_statement = after_statement
        self._slots: asyncio.Semaphore | None = None
        self._size = settings.thread_pool_size
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()
        self._idle: asyncio.Event | None = None  # set when no load thread is left
        self._starts: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._starter: threading.Thread | None = None

    def reconfigure(self, settings: SnowflakeSettings, retry: RetrySettings) -> None:
        """New batch size, timeouts and waits for loads that start from now on. The pool size stays."""
        self._settings = settings
        self._retry = retry

    @property
    def loads_in_flight(self) -> int:
        with self._threads_lock:
            return len(self._threads)

    async def load(
        self,
        spec: SnowflakeConnectionSpec,
        target: LoadTarget,
        metadata: RunMetadata,
        files: Sequence[Path],
        *,
        declared_types: Mapping[str, str] | None = None,
        fence: Callable[[], Coroutine[Any, Any, None]] | None = None,
        deadline_seconds: float | None = None,
        started: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> LoadResult:
        """`started`: awaited once one of the sink's threads is this load's, before the load begins."""
        settings, retry = self._settings, self._retry
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._size)
            self._idle = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def fence_in_thread() -> None:
            if stop.is_set():
                raise LoadCancelled("the load was cut off before its commit")
            if fence is not None:
                try:
                    asyncio.run_coroutine_threadsafe(fence(), loop).result(timeout=FENCE_TIMEOUT_SECONDS)
                except TimeoutError as exc:
                    raise LoadCancelled("the lease could not be checked before the commit") from exc
            if stop.is_set():
                raise LoadCancelled("the load was cut off before its commit")

        # Snowflake's cost and query views attribute each statement to the session's tag: say whose load it is.
        query_tag = json.dumps(
            {
                "app": "recomamp",
                "schedule": metadata.schedule_id,
                "run": metadata.run_id,
                "claim": metadata.claim,
                "table": target.display,
            },
            separators=(",", ":"),
        )
        loader = Loader(
            functools.partial(spec.connect, settings, query_tag),
            LoadPolicy(
                batch_rows=settings.batch_rows,
                max_attempts=retry.snowflake_max_attempts,
                waits=retry.snowflake_waits,
                sleep=lambda seconds: _wait(stop, seconds),  # a wait the deadline interrupts
            ),
            after_statement=self._after_statement,
            fence=fence_in_thread,
            cancelled=stop.is_set,
        )
        deadline = deadline_seconds if deadline_seconds is not None else settings.load_timeout_seconds
        if metadata.claim > 1:
            # Before the wait for a thread, which may be held by loads that this run's dead claim blocks.
            await self._end_stale_claims(loader, metadata, min(deadline, STALE_CLAIM_CHECK_SECONDS))
        async with self._slots:
            if started is not None:
                await started()
            future = self._start_thread(
                f"snowflake-run{metadata.run_id}",
                functools.partial(loader.load, target, metadata, list(files), declared_types),
            )
            # A thread given up on settles its future later, with nobody awaiting it: consume that answer.
            future.add_done_callback(_consume_unawaited)
            try:
                return await asyncio.wait_for(asyncio.shield(future), deadline)
            except TimeoutError:
                stop.set()
                log.error("snowflake_load_timed_out", table=target.display, deadline_seconds=deadline)
                raise LoadTimedOut(
                    f"the Snowflake load into {target.display} did not finish within {deadline:.0f} s "
                    "([snowflake] load_timeout_seconds) and was cut off; nothing was committed after that"
                ) from None
            except asyncio.CancelledError:
                stop.set()
                raise

    def _start_thread(self, name: str, work_for: Callable[[], T]) -> asyncio.Future[T]:
        """`work_for` on a thread of the sink's own (a daemon thread, counted in `loads_in_flight`, so `close`
        waits for it and one still running at exit dies with us), its answer on the returned future."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        context = contextvars.copy_context()

        def work() -> None:
            try:
                result = context.run(work_for)
            except BaseException as exc:  # handed to the event loop, which raises it in the caller
                self._ended(loop, thread, future, None, exc)
            else:
                self._ended(loop, thread, future, result, None)

        thread = threading.Thread(target=work, name=name, daemon=True)
        with self._threads_lock:
            self._threads.add(thread)
        assert self._idle is not None
        self._idle.clear()

        def start() -> None:
            try:
                thread.start()
            except BaseException as exc:  # no thread to be had ("can't start new thread"): the caller hears it
                self._ended(loop, thread, future, None, exc)

        self._start_soon(start)
        return future

    def _ended(
        self,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        future: asyncio.Future[T],
        result: T | None,
        error: BaseException | None,
    ) -> None:
        """From the thread that ran (or could not start) `thread`: out of the count, then its answer to the loop in
        one hop. A loop already closed has nobody left to tell; raising here instead killed the starter thread
        (seen beside a CPU hog, when the starter ran only after the loop had closed), and no load started again."""
        with self._threads_lock:
            self._threads.discard(thread)
        with contextlib.suppress(RuntimeError):  # "Event loop is closed"
            loop.call_soon_threadsafe(self._answer, future, result, error)

    def _answer(self, future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
        _settle(future, result, error)
        # Counted here, on the loop, where loads start: a load started since the thread ended keeps it unset.
        if self._idle is not None and not self.loads_in_flight:
            self._idle.set()

    def _start_soon(self, start: Callable[[], None]) -> None:
        """Thread.start waits until the new thread runs, which needs the GIL: beside twenty busy load threads that
        held the event loop 0.14 s at the median (over 1 s beside a CPU hog). The sink's one starter thread waits
        instead (an executor would start a worker of its own on the loop, the same wait)."""
        with self._threads_lock:
            if self._starter is None:
                self._starts = queue.SimpleQueue()
                self._starter = threading.Thread(
                    target=_run_starts, args=(self._starts,), name="snowflake-thread-starter", daemon=True
                )
                self._starter.start()  # once, with the first load, before loads contend for the GIL
            self._starts.put(start)

    async def _end_stale_claims(self, loader: Loader, metadata: RunMetadata, deadline: float) -> None:
        """On a thread of its own, outside the load threads' slots; a failure here leaves it to the load itself."""
        try:
            thread = f"snowflake-run{metadata.run_id}-stale-claims"
            answer = self._start_thread(
                thread, functools.partial(loader.end_stale_claims, metadata.run_id, metadata.claim)
            )
            answer.add_done_callback(_consume_unawaited)
            await asyncio.wait_for(asyncio.shield(answer), deadline)
        except Exception as exc:  # the load's own transaction looks again, and Snowflake aborts them in the end
            log.warning(
                "snowflake_stale_claim_check_failed",
                exception_class=type(exc).__name__,
                detail="the load goes on; its transaction ends what an earlier claim left open when it starts",
            )

    async def close(self, wait_seconds: float) -> int:
        """Wait up to `wait_seconds` for loads still running; returns how many are left (their threads die with us)."""
        if self.loads_in_flight and self._idle is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), wait_seconds)
        with self._threads_lock:
            if self._starter is not None:  # after the starts already asked for
                self._starts.put(None)
                self._starter = None
        left = self.loads_in_flight
        if left:
            log.warning("snowflake_loads_abandoned_at_exit", loads=left, detail="nothing they do is committed")
        return left


def _settle(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)


def _run_starts(starts: queue.SimpleQueue[Callable[[], None] | None]) -> None:
    while (start := starts.get()) is not None:
        try:
            start()
        except Exception as exc:  # every later load needs this thread: one start that failed oddly must not end it
            log.error(
                "snowflake_thread_start_failed",
                exception_class=type(exc).__name__,
                detail="the sink's thread starter goes on with the next load",
            )


def _consume_unawaited(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _wait(stop: threading.Event, seconds: float) -> None:
    stop.wait(seconds)
