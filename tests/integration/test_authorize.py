"""`recomamp users authorize` against the simulator over real HTTP: the CLI runs as a process, the test plays
the person and the browser (it opens the consent link and follows Amazon's redirect, or pastes it)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from recomamp import wiring
from recomamp.config import load_config
from recomamp.crypto import SecretBox
from recomamp.sandbox.embedded import free_port
from recomamp.sandbox.simulator import AmcSimulator
from recomamp.services.authorize import AuthorizeError, ConsentRequest, check_age, code_from_paste
from tests.conftest import ConfigWriter
from tests.integration.world import add_due_schedule, add_tenant, write_world_config

EMAIL = "bob@example.com"


@dataclass
class Authorize:
    process: asyncio.subprocess.Process
    consent_url: str

    async def answer(self, text: str) -> tuple[int, str, str]:
        assert self.process.stdin is not None
        out, err = await self.process.communicate((text + "\n").encode())
        assert self.process.returncode is not None
        return self.process.returncode, out.decode(), err.decode()

    async def finish(self) -> tuple[int, str, str]:
        out, err = await asyncio.wait_for(self.process.communicate(), 30)
        assert self.process.returncode is not None
        return self.process.returncode, out.decode(), err.decode()


@pytest.fixture
async def world(
    pool: asyncpg.Pool, db_dsn: str, box: SecretBox, simulator: AmcSimulator, write_config: ConfigWriter
) -> Path:
    await add_tenant(pool, box, simulator, EMAIL, "amcZ")
    simulator.add_instance(EMAIL, "amcZ")  # what GET /amc/accounts lists for bob
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    simulator.allowed_return_urls.append(redirect)
    simulator.consent_user = EMAIL
    path = write_world_config(write_config, db_dsn, simulator)
    consent = simulator.consent_url
    path.write_text(
        path.read_text().replace("[amazon]\n", f'[amazon]\nredirect_uri = "{redirect}"\n', 1)
        + f'\n[amazon.consent_url]\nna = "{consent}"\neu = "{consent}"\nfe = "{consent}"\n'
    )
    return path


@asynccontextmanager
async def authorize(config: Path, *extra: str) -> AsyncIterator[Authorize]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "recomamp", "users", "authorize", EMAIL, "--config", str(config), *extra,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert process.stdout is not None
    url = ""
    while not url:
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        assert line, "authorize exited before printing the consent link"
        if line.strip().startswith("http"):
            url = line.strip()
    try:
        yield Authorize(process, url)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def amazon_redirect(consent_url: str) -> str:
    """The browser: opens the consent page (the simulator approves at once) and returns where it is sent."""
    async with aiohttp.ClientSession() as session, session.get(consent_url, allow_redirects=False) as response:
        assert response.status == 302, await response.text()
        return response.headers["Location"]


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


async def test_the_loopback_flow_stores_the_token_proves_it_and_requeues_exactly_the_failed_windows(
    pool: asyncpg.Pool, world: Path, simulator: AmcSimulator
) -> None:
    # bob's token is revoked: his two schedules fail with the re-authentication message.
    tenant_id = await pool.fetchval("SELECT id FROM users WHERE email = $1", EMAIL)
    from tests.integration.world import Tenant

    tenant = Tenant(EMAIL, int(tenant_id), "amcZ")
    first = await add_due_schedule(pool, tenant, "bob one")
    second = await add_due_schedule(pool, tenant, "bob two")
    simulator.revoke(EMAIL)
    assert await wiring.daemon(load_config(world), once=True).run() == 1
    failed = await pool.fetch(
        "SELECT schedule_id, window_start, window_end FROM schedule_runs WHERE status = 'failed' ORDER BY schedule_id"
    )
    assert [r["schedule_id"] for r in failed] == [first, second]

    async with authorize(world, "--rerun-failed") as flow:
        assert "code_challenge_method=S256" in flow.consent_url and "scope=advertising" in flow.consent_url
        location = await amazon_redirect(flow.consent_url)
        async with aiohttp.ClientSession() as session, session.get(location) as page:  # the loopback listener
            assert page.status == 200 and "close this page" in await page.text()
        code, out, err = await flow.finish()
    assert code == 0, err
    assert f"{EMAIL} is authorized; the re-authentication mark is cleared" in out
    assert "GET /amc/accounts sees 1 account(s)" in out
    assert "queued again 2 run(s)" in out
    secret_code = parse_qs(urlsplit(location).query)["code"][0]
    assert secret_code not in out + err
    user = await pool.fetchrow("SELECT needs_reauth FROM users WHERE email = $1", EMAIL)
    assert user is not None and user["needs_reauth"] is False
    requeued = await pool.fetch(
        "SELECT schedule_id, window_start, window_end FROM schedule_runs WHERE trigger = 'rerun' ORDER BY schedule_id"
    )
    assert [tuple(r) for r in requeued] == [tuple(r) for r in failed]  # their own windows, one run each
    assert await wiring.daemon(load_config(world), once=True).run() == 0  # and they land
    statuses = await pool.fetch("SELECT status FROM schedule_runs WHERE trigger = 'rerun'")
    assert {r["status"] for r in statuses} == {"succeeded"}


async def test_the_consent_link_is_shown_only_once_the_loopback_listens(world: Path) -> None:
    """A browser (or a person) quicker than the bind met a refused connection: the link comes after the bind, and a
    taken port is one line with no link to open first."""
    redirect = next(line for line in world.read_text().splitlines() if line.startswith("redirect_uri"))
    port = int(redirect.rsplit(":", 1)[1].split("/", 1)[0])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "recomamp", "users", "authorize", EMAIL, "--config", str(world),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2, (out, err)
    assert f"cannot listen on http://127.0.0.1:{port}/callback" in err.decode()
    assert b"http" not in out  # no consent link to open


async def test_the_paste_flow_and_every_bad_answer_is_one_line_and_stores_nothing(
    pool: asyncpg.Pool, world: Path, simulator: AmcSimulator
) -> None:
    before = await pool.fetchval("SELECT refresh_token_encrypted FROM users WHERE email = $1", EMAIL)

    async def refused(answer: str | None, expect: str, *, deny: bool = False) -> str:
        simulator.consent_decision = "deny" if deny else "approve"
        async with authorize(world, "--paste") as flow:
            location = await amazon_redirect(flow.consent_url)
            code, out, err = await flow.answer(answer if answer is not None else location)
        assert code == 2, (out, err)
        assert expect in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        return location

    await refused(None, "denied access (access_denied)", deny=True)
    await refused("", "nothing was pasted")
    await refused("WRONG", "neither the redirected URL nor a code")
    async with authorize(world, "--paste") as flow:
        location = await amazon_redirect(flow.consent_url)
        code, _, err = await flow.answer(with_query(location, state="forged"))
    assert code == 2 and "state in the answer does not match" in err
    async with authorize(world, "--paste") as flow:
        location = await amazon_redirect(flow.consent_url)
        wrong = location.replace("/callback", "/elsewhere")
        code, _, err = await flow.answer(wrong)
    assert code == 2 and "is not the redirect_uri" in err
    async with authorize(world, "--paste") as flow:
        location = await amazon_redirect(flow.consent_url)
        code, _, err = await flow.answer(with_query(location, code=""))
    assert code == 2 and "no code=" in err
    # A code Amazon no longer takes: expired, then one used already.
    simulator.code_ttl_seconds = 0.2
    async with authorize(world, "--paste") as flow:
        location = await amazon_redirect(flow.consent_url)
        await asyncio.sleep(0.5)
        code, _, err = await flow.answer(location)
    assert code == 2 and "Amazon refused the code (invalid_grant" in err
    simulator.code_ttl_seconds = 300
    assert await pool.fetchval("SELECT refresh_token_encrypted FROM users WHERE email = $1", EMAIL) == before

    # The paste flow that works, then the same code again (only the code this time): refused.
    async with authorize(world, "--paste") as flow:
        location = await amazon_redirect(flow.consent_url)
        code, _, err = await flow.answer(location)
    assert code == 0, err
    assert await pool.fetchval("SELECT refresh_token_encrypted FROM users WHERE email = $1", EMAIL) != before
    used = parse_qs(urlsplit(location).query)["code"][0]
    async with authorize(world, "--paste") as flow:
        code, _, err = await flow.answer(used)
    assert code == 2 and "Amazon refused the code" in err
    assert used not in err

    # An unknown email: one line, exit 2, before any link is made.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "recomamp", "users", "authorize", "nobody@example.com", "--config", str(world),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out_bytes, err_bytes = await process.communicate()
    assert process.returncode == 2 and "no user nobody@example.com" in err_bytes.decode()
    assert b"http" not in out_bytes


def test_a_code_older_than_five_minutes_is_refused_before_it_is_sent() -> None:
    request = ConsentRequest("u", "s", "v", "http://localhost:8765/callback", started=1000.0)
    check_age(request, now=1000.0 + 299)
    with pytest.raises(AuthorizeError, match="Amazon's codes live 5"):
        check_age(request, now=1000.0 + 301)
    assert code_from_paste("  abcdefghij \n", request) == "abcdefghij"
