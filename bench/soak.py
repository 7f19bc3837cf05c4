"""A month of hourly token refreshes for 100 users, time-compressed: 72,000 real refreshes through the token
service (Postgres, the LWA simulator over HTTP, encryption, JSON logs with redaction). Reports the process's
RSS and the cost of one log line after a warm-up and at the end: neither may grow with uptime.

Baseline, in the same run: the same log line's cost and the RSS measured after the warm-up.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from cryptography.fernet import Fernet
from pydantic import SecretStr

from recomamp.amazon.lwa import LwaClient
from recomamp.config import RetrySettings
from recomamp.crypto import SecretBox
from recomamp.domain.retry import TokenPolicy
from recomamp.logs import configure_logging, get_logger, known_secret_count
from recomamp.sandbox.embedded import recreate_database, start_postgres
from recomamp.sandbox.simulator import AmcSimulator
from recomamp.services.tokens import TokenService, set_refresh_token
from recomamp.store import migrations
from recomamp.store.db import create_pool

USERS = 100
HOURS = 24 * 30
CONCURRENCY = 25


def log_line_microseconds(lines: int = 2000, repeats: int = 3) -> float:
    """The cost of one JSON log line through the real renderer and redaction, on a throwaway stream: the best
    of `repeats` measurements, so that a busy moment of the machine is not read as growth."""
    log = get_logger("recomamp.soak")
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for n in range(lines):
            log.info(
                "soak_line",
                user_email=f"user{n % USERS}@example.com",
                detail="a refreshed token Atza|IwEBIexample and a password=hunter2 in a message",
                attempt=n,
            )
        best = min(best, (time.perf_counter() - started) / lines * 1e6)
    return best


async def _run(admin_dsn: str) -> dict[str, Any]:
    dsn = await recreate_database(admin_dsn, "recomamp_bench_soak")
    pool = await create_pool(dsn, size=CONCURRENCY + 2, command_timeout=30, connect_timeout=10)
    async with pool.acquire() as connection:
        await migrations.migrate_up(connection)
    box = SecretBox([SecretStr(Fernet.generate_key().decode())])
    simulator = AmcSimulator()
    process = psutil.Process()
    async with simulator.serve(), aiohttp.ClientSession() as http:
        lwa = LwaClient(
            http,
            token_url=simulator.token_url,
            client_id=simulator.client_id,
            client_secret=SecretStr(simulator.client_secret),
            timeout_seconds=10,
        )
        service = TokenService(pool, lwa, box, TokenPolicy.from_settings(RetrySettings(), 300))
        users = []
        for n in range(USERS):
            user_id = await pool.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", f"user{n}@example.com")
            await set_refresh_token(pool, box, user_id, simulator.add_user(f"user{n}@example.com"))
            users.append(user_id)
        current: dict[int, str] = {}

        async def hour(hour_index: int) -> None:
            semaphore = asyncio.Semaphore(CONCURRENCY)

            async def refresh(user_id: int) -> None:
                async with semaphore:
                    # An hour later the access token is stale: AMC would answer 401 to it.
                    current[user_id] = await service.access_token(user_id, stale=current.get(user_id))

            await asyncio.gather(*(refresh(u) for u in users))
            simulator.access_tokens.clear()  # the simulator forgets them, as Amazon's expire

        warm_up = 24  # a day, so the process's steady state is what is compared
        for h in range(warm_up):
            await hour(h)
        gc.collect()
        rss_start = process.memory_info().rss / 2**20
        line_start = log_line_microseconds()
        started = time.perf_counter()
        for h in range(warm_up, HOURS):
            await hour(h)
        seconds = time.perf_counter() - started
        gc.collect()
        rss_end = process.memory_info().rss / 2**20
        line_end = log_line_microseconds()
        lwa_calls = simulator.calls["lwa_token"]
    await pool.close()
    return {
        "refreshes": lwa_calls,
        "seconds": round(seconds, 1),
        "rss_after_warm_up_mb": round(rss_start, 1),
        "rss_at_end_mb": round(rss_end, 1),
        "rss_growth": round(rss_end / rss_start, 3),
        "log_line_us_after_warm_up": round(line_start, 1),
        "log_line_us_at_end": round(line_end, 1),
        "log_line_growth": round(line_end / line_start, 2),
        "secrets_registered_for_redaction": known_secret_count(),
    }


def main() -> dict[str, Any]:
    # Logs are rendered for real (redaction included) into a stream nobody reads.
    configure_logging("info", stream=open(os.devnull, "w"))  # noqa: SIM115 - for the life of the process
    logging.getLogger("recomamp.services.tokens").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="recomamp-soak-") as directory:
        admin_dsn = start_postgres(Path(directory) / "pg")
        return asyncio.run(_run(admin_dsn))


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
