"""The async face of the Snowflake write: loads run on a bounded thread pool, never on the event loop.

The blocking connector runs in worker threads; each load carries the caller's contextvars (the
structlog context: user, schedule, run, attempt) into its thread, so its log lines say whose load it is.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from recomamp.config import RetrySettings, SnowflakeSettings
from recomamp.snowflake.connection import SnowflakeConnectionSpec
from recomamp.snowflake.loader import Loader, LoadPolicy, LoadResult, LoadTarget, RunMetadata, StatementHook


class SnowflakeSink:
    def __init__(
        self,
        settings: SnowflakeSettings,
        retry: RetrySettings,
        *,
        after_statement: StatementHook | None = None,
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=settings.thread_pool_size, thread_name_prefix="snowflake")
        self._settings = settings
        self._retry = retry
        self._after_statement = after_statement

    def reconfigure(self, settings: SnowflakeSettings, retry: RetrySettings) -> None:
        """New batch size, timeouts and waits for loads that start from now on. The pool size stays."""
        self._settings = settings
        self._retry = retry

    async def load(
        self,
        spec: SnowflakeConnectionSpec,
        target: LoadTarget,
        metadata: RunMetadata,
        files: Sequence[Path],
    ) -> LoadResult:
        settings, retry = self._settings, self._retry
        loader = Loader(
            functools.partial(spec.connect, settings),
            LoadPolicy(
                batch_rows=settings.batch_rows,
                max_attempts=retry.snowflake_max_attempts,
                waits=retry.snowflake_waits,
            ),
            after_statement=self._after_statement,
        )
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(context.run, loader.load, target, metadata, list(files))
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
