"""The token service end to end: Postgres, the simulator over real HTTP, zero waits."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator

import aiohttp
import asyncpg
import pytest
import structlog

from recomamp.crypto import SecretBox
from recomamp.domain.retry import TokenError
from recomamp.sandbox.simulator import AmcSimulator, Fault
from recomamp.services.tokens import set_refresh_token
from recomamp.testing import LogCapture, capture_logs
from tests.integration.conftest import add_user, make_token_service


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    with capture_logs("debug") as captured:
        yield captured


async def test_a_first_use_refreshes_then_reuses_the_stored_token(
    pool: asyncpg.Pool, http: aiohttp.ClientSession, simulator: AmcSimulator, box: SecretBox, logs: LogCapture
) -> None:
    user_id = await add_user(pool, box, "ada@example.com", simulator.add_user("ada@example.com"))
    service = make_token_service(pool, http, simulator, box)
    first = await service.access_token(user_id)
    second = await service.access_token(user_id)
    assert first == second
    assert first in simulator.access_tokens
    assert simulator.calls["lwa_token"] == 1
    checks = logs.events("token_checked")
    assert [c["token_status"] for c in checks] == ["missing", "valid"]
    assert 3500 < int(checks[1]["token_seconds_left"]) <= 3600  # type: ignore[call-overload]


async def test_no_plaintext_token_is_stored(
    pool: asyncpg.Pool, http: aiohttp.ClientSession, simulator: AmcSimulator, box: SecretBox
) -> None:
    refresh = simulator.add_user("ada@example.com")
    user_id = await add_user(pool, box, "ada@example.com", refresh)
    access = await make_token_service(pool, http, simulator, box).access_token(user_id)
    row = await pool.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
    assert row is not None
    dump = json.dumps({k: str(v) for k, v in dict(row).items()})
    assert refresh not in dump and access not in dump and "Atz" not in dump
    assert box.decrypt(row["refresh_token_encrypted"]) == refresh
    assert box.decrypt(row["access_token_encrypted"]) == access


async def test_fifty_concurrent_callers_make_one_lwa_call(
    pool: asyncpg.Pool, http: aiohttp.ClientSession, simulator: AmcSimulator, box: SecretBox
) -> None:
    user_id = await add_user(pool, box, "ada@example.com", simulator.add_user("ada@example.com"))
    service = make_token_service(pool, http, simulator, box)
    tokens = await asyncio.gather(*(service.access_token(user_id) for _ in range(50)))
    assert len(set(tokens)) == 1
    assert simulator.calls["lwa_token"] == 1


async def test_two_replicas_never_refresh_one_user_at_once(
    pool: asyncpg.Pool, http: aiohttp.ClientSession, simulator: AmcSimulator, box: SecretBox
) -> None:
    user_id = await add_user(pool, box, "ada@example.com", simulator.add_user("ada@example.com"))
    replicas = [make_token_service(pool, http, simulator, box) for _ in range(3)]
    tokens = await asyncio.gather(*(replica.access_token(user_id) for replica in replicas for _ in range(5)))
    assert len(set(tokens)) == 1
    assert simulator.calls["lwa_token"] == 1


async def test_transient_lwa_failures_heal_with_attempts_logged(
    pool: asyncpg.Pool, http: aiohttp.ClientSession, simulator: AmcSimulator, box: SecretBox, logs: LogCapture
) -> None:
    user_id = await add_user(pool, box, "ada@example.com", simulator.add_user("ada@example.com"))
    simulator.add_faults("lwa_token", Fault.http(503), Fault.throttled(retry_after=0), user="ada@example.com")
    structlog.contextvars.bind_contextvars(run_id=77)
    await make_token_service(pool, http, simulator, box).access_token(user_id)
    assert simulator.calls["lwa_token"] == 3
    failed = logs.events("token_refresh_attempt_failed")
    assert [(f["attempt"], f["http_status"], f["will_retry"]) for f in failed] == [(1, 503, True), (2, 429, True)]
    assert all(f["user_email"] == "ada@example.com" and f["run_id"] == 77 for f in failed)


async def test_a_hanging_and_a_dropped_connection_are_retried(
    pool: asyncpg.Pool, http: aiohttp.ClientSession, simulator: AmcSimulator, box: SecretBox, logs: LogCapture
) -> None:
    user_id = await add_user(pool, box, "ada@example.com", simulator.add_user("ada@example.com"))
    simulator.add_faults("lwa_token", Fault.hang(5), Fault.dropped(), user="ada@example.com")
    service = make_token_service(pool, http, simulator, box, timeout=0.3)
    await service.access_token(user_id)
    failed = logs.events("token_refresh_attempt_failed")
    assert [f["exception_class"] for f in failed] == ["TimeoutError", "ServerDisconnectedError"]
    assert simulator.calls["lwa_token"] == 3


async def test_a_revoked_token_marks_the_user_and_later_runs_fail_fast(
    pool: asyncpg.Pool, http: aiohttp.ClientSession, simulator: AmcSimulator, box: SecretBox, logs: LogCapture
) -> None:
    user_id = await add_user(pool, box, "bob@example.com", simulator.add_user("bob@example.com"))
    simulator.revoke("bob@example.com")
    service = make_token_service(pool, http, simulator, box)
    with pytest.raises(TokenError) as first:
        await service.access_token(user_id)
    assert first.value.permanent
    assert first.value.message.startswith("User needs to re-authenticate via Amazon OAuth")
    row = await pool.fetchrow("SELECT needs_reauth, needs_reauth_reason FROM users WHERE id = $1", user_id)
    assert row is not None
    assert row["needs_reauth"] is True
    assert "invalid_grant" in row["needs_reauth_reason"]
    assert simulator.calls["lwa_token"] == 1

    with pytest.raises(TokenError) as again:
        await service.access_token(user_id)
    assert again.value.message.startswith("User needs to re-authenticate via Amazon OAuth")
    assert "recomamp users authorize bob@example.com --rerun-failed" in again.value.message
    assert simulator.calls["lwa_token"] == 1  # no call to LWA while the mark stands

    async with pool.acquire() as connection:
        await set_refresh_token(connection, box, user_id, simulator.add_user("bob@example.com"))
    assert await service.access_token(user_id)
    assert await pool.fetchval("SELECT needs_reauth FROM users WHERE id = $1", user_id) is False


async def test_invalid_client_leaves_the_user_alone(
    pool: asyncpg.Pool, http: aiohttp.ClientSession, simulator: AmcSimulator, box: SecretBox
) -> None:
    user_id = await add_user(pool, box, "cy@example.com", simulator.add_user("cy@example.com"))
    service = make_token_service(pool, http, simulator, box)
    simulator.client_secret = "rotated-at-amazon"
    with pytest.raises(TokenError) as excinfo:
        await service.access_token(user_id)
    assert excinfo.value.kind == "client_credentials"
    assert "not the user's fault" in excinfo.value.message
    assert await pool.fetchval("SELECT needs_reauth FROM users WHERE id = $1", user_id) is False
    assert simulator.calls["lwa_token"] == 1


async def test_a_stale_token_after_amc_401_forces_one_refresh(
    pool: asyncpg.Pool, http: aiohttp.ClientSession, simulator: AmcSimulator, box: SecretBox
) -> None:
    user_id = await add_user(pool, box, "ada@example.com", simulator.add_user("ada@example.com"))
    service = make_token_service(pool, http, simulator, box)
    old = await service.access_token(user_id)
    new = await asyncio.gather(*(service.access_token(user_id, stale=old) for _ in range(10)))
    assert len(set(new)) == 1 and new[0] != old
    assert simulator.calls["lwa_token"] == 2


async def test_a_rotated_refresh_token_replaces_the_stored_one(
    pool: asyncpg.Pool, http: aiohttp.ClientSession, simulator: AmcSimulator, box: SecretBox
) -> None:
    original = simulator.add_user("ada@example.com")
    user_id = await add_user(pool, box, "ada@example.com", original)
    simulator.rotate_refresh_tokens = True
    service = make_token_service(pool, http, simulator, box)
    first = await service.access_token(user_id)
    stored = box.decrypt(await pool.fetchval("SELECT refresh_token_encrypted FROM users WHERE id = $1", user_id))
    assert stored != original and simulator.refresh_tokens[stored] == "ada@example.com"
    # The rotated token works for the next refresh: the original is gone at the simulator.
    assert await service.access_token(user_id, stale=first) != first


async def test_a_user_without_a_refresh_token_is_told_how_to_fix_it(
    pool: asyncpg.Pool, http: aiohttp.ClientSession, simulator: AmcSimulator, box: SecretBox
) -> None:
    user_id = await add_user(pool, box, "dee@example.com", None)
    with pytest.raises(TokenError, match=re.escape("no refresh token is stored for dee@example.com")):
        await make_token_service(pool, http, simulator, box).access_token(user_id)
    assert simulator.calls["lwa_token"] == 0


async def test_a_refresh_without_a_refresh_token_keeps_the_stored_one(
    pool: asyncpg.Pool, http: aiohttp.ClientSession, simulator: AmcSimulator, box: SecretBox
) -> None:
    original = simulator.add_user("ada@example.com")
    user_id = await add_user(pool, box, "ada@example.com", original)
    simulator.return_refresh_token = False
    service = make_token_service(pool, http, simulator, box)
    first = await service.access_token(user_id)
    stored = await pool.fetchval("SELECT refresh_token_encrypted FROM users WHERE id = $1", user_id)
    assert box.decrypt(stored) == original
    assert await service.access_token(user_id, stale=first) != first  # and it still works next time
