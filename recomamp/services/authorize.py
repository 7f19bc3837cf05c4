"""`recomamp users authorize`: Login with Amazon's authorization-code grant with PKCE, end to end.

1. A consent URL for the user's region, with `scope=advertising::campaign_management`, a random `state`
   and a PKCE S256 challenge (../shared/AMC_API.md, "Authorization-code grant").
2. The way back: a loopback listener on the registered `[amazon] redirect_uri` (Amazon matches it exactly,
   so its port is fixed) that tells the browser it may close the page; or, on a headless server, the
   person pastes the redirected URL (or only the code).
3. Checks: `state`, `error=access_denied`, a code older than its 5-minute life, a URL that is not the
   redirect_uri. Each is one line that says what to do, and nothing is stored.
4. The code is exchanged (`grant_type=authorization_code`, `redirect_uri`, `code_verifier`); the refresh
   token is stored encrypted and the re-authentication mark cleared; one refresh and `GET /amc/accounts`
   prove it; `--rerun-failed` queues again the runs that failed for re-authentication since the mark.
The code, the verifier and the tokens are never printed or logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from aiohttp import web

from recomamp.amazon.lwa import LwaAttemptFailed
from recomamp.config import Config
from recomamp.logs import get_logger
from recomamp.services.adapters import Services

log = get_logger(__name__)

SCOPE = "advertising::campaign_management"
CODE_LIFETIME_SECONDS = 300.0  # Amazon's authorization codes live 5 minutes


class AuthorizeError(ValueError):
    """One line for a person: what went wrong and what to do. Nothing was stored."""


@dataclass(frozen=True)
class ConsentRequest:
    url: str
    state: str
    code_verifier: str
    redirect_uri: str
    started: float  # time.monotonic() when the consent URL was made


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge): RFC 7636, a 64-character verifier."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def consent_request(config: Config, region: str) -> ConsentRequest:
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(24)
    redirect_uri = config.amazon.redirect_uri
    query = urlencode(
        {
            "client_id": config.amazon.client_id,
            "scope": SCOPE,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    base = config.amazon.consent_url.for_region(region)  # type: ignore[arg-type]
    return ConsentRequest(f"{base}?{query}", state, verifier, redirect_uri, time.monotonic())


def _same_endpoint(url: str, redirect_uri: str) -> bool:
    given, expected = urlsplit(url), urlsplit(redirect_uri)
    return (given.scheme, given.hostname, given.port, given.path.rstrip("/")) == (
        expected.scheme,
        expected.hostname,
        expected.port,
        expected.path.rstrip("/"),
    )


def code_from_answer(answer: dict[str, str], request: ConsentRequest) -> str:
    """The checks on what Amazon sent back (as query parameters). Returns the code."""
    if answer.get("error"):
        if answer["error"] == "access_denied":
            raise AuthorizeError(
                "Amazon says the user denied access (access_denied): nothing stored; run `recomamp users authorize` "
                "again and approve on Amazon's page"
            )
        raise AuthorizeError(
            f"Amazon answered {answer['error']}: {answer.get('error_description', 'no description')}; nothing stored"
        )
    if answer.get("state") != request.state:
        raise AuthorizeError(
            "the state in the answer does not match this request (an old or someone else's link?): nothing stored; "
            "run `recomamp users authorize` again and use its new link"
        )
    code = answer.get("code", "")
    if not code:
        raise AuthorizeError("the answer carries no code=…: paste the whole URL the browser was sent to")
    return code


def code_from_paste(text: str, request: ConsentRequest) -> str:
    """--paste: the whole redirected URL (checked like the listener's answer), or only the code."""
    text = text.strip()
    if not text:
        raise AuthorizeError("nothing was pasted: paste the whole URL the browser was sent to after approving")
    if "://" in text:
        if not _same_endpoint(text, request.redirect_uri):
            raise AuthorizeError(
                f"the pasted URL is not the redirect_uri {request.redirect_uri} ([amazon] redirect_uri): "
                "paste the URL Amazon sent the browser to"
            )
        query = {key: values[0] for key, values in parse_qs(urlsplit(text).query).items()}
        return code_from_answer(query, request)
    if any(c.isspace() for c in text) or len(text) < 8:
        raise AuthorizeError("that is neither the redirected URL nor a code: paste the whole URL from the browser")
    return text


def check_age(request: ConsentRequest, now: float | None = None) -> None:
    age = (now if now is not None else time.monotonic()) - request.started
    if age > CODE_LIFETIME_SECONDS:
        raise AuthorizeError(
            f"the code is {age / 60:.0f} minutes old and Amazon's codes live 5: nothing stored; run "
            "`recomamp users authorize` again and finish within 5 minutes"
        )


async def wait_for_browser(
    request: ConsentRequest,
    wait_seconds: float = CODE_LIFETIME_SECONDS,
    *,
    listening: Callable[[], None] = lambda: None,
) -> str:
    """Listen on the redirect_uri's loopback address until Amazon's redirect arrives; returns the code.

    `listening` is called once the address is bound, and is where the consent link is shown: a browser quicker
    than the bind (or a person on a busy machine) would otherwise meet a refused connection, and a taken port
    would be reported after the link had been opened."""
    parts = urlsplit(request.redirect_uri)
    if parts.scheme != "http" or parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise AuthorizeError(
            f"[amazon] redirect_uri {request.redirect_uri} is not a loopback http:// address this command can "
            "listen on: use --paste"
        )
    answer: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()

    async def callback(http_request: web.Request) -> web.Response:
        if not answer.done():
            answer.set_result(dict(http_request.query))
        return web.Response(
            text="<!doctype html><title>recomamp</title><p>recomamp got Amazon's answer. You can close this page; "
            "the terminal says how it went.</p>",
            content_type="text/html",
        )

    app = web.Application()
    app.router.add_get(parts.path or "/", callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    try:
        await web.TCPSite(runner, host, parts.port or 80).start()
    except OSError as exc:
        await runner.cleanup()
        raise AuthorizeError(
            f"cannot listen on {request.redirect_uri} ({exc.strerror}): free that port, or use --paste"
        ) from None
    try:
        listening()
        query = await asyncio.wait_for(answer, wait_seconds)
    except TimeoutError:
        raise AuthorizeError(
            f"no answer from the browser within {wait_seconds / 60:.0f} minutes: nothing stored; run it again"
        ) from None
    finally:
        await runner.cleanup()
    return code_from_answer(query, request)


async def complete(
    services: Services,
    config: Config,
    email: str,
    code: str,
    request: ConsentRequest,
    *,
    region: str,
    rerun_failed: bool,
) -> dict[str, Any]:
    """Exchange the code, store the refresh token, prove it, and optionally queue the failed runs again.
    The caller checks the code's age (`check_age`) before it opens `services`; it is checked again here."""
    from recomamp.services.load import UserTokenSource
    from recomamp.services.runs import rerun_failed_for_reauth
    from recomamp.services.tokens import set_refresh_token
    from recomamp.store import catalog

    check_age(request)
    user_id = await catalog.user_id_for(services.pool, email)
    try:
        grant = await services.tokens.lwa.exchange_code(
            code, redirect_uri=request.redirect_uri, code_verifier=request.code_verifier
        )
    except LwaAttemptFailed as exc:
        failure = exc.failure
        raise AuthorizeError(
            f"Amazon refused the code ({failure.error_code or failure.http_status}: "
            f"{failure.error_description or failure.kind}): it may be used, older than 5 minutes, or for "
            "another redirect_uri; nothing stored; run `recomamp users authorize` again"
        ) from None
    if not grant.refresh_token:
        raise AuthorizeError("Amazon's answer has no refresh token: nothing stored; run it again")
    async with services.pool.acquire() as connection:
        marked_at: datetime | None = await set_refresh_token(connection, services.box(), user_id, grant.refresh_token)
    log.info("user_authorized", user_email=email, was_marked=marked_at is not None)
    # Proof: one refresh through the stored token, and the accounts it can see.
    tokens = UserTokenSource(services, user_id)
    accounts = await services.amc.accounts.accounts(
        config.amazon.amc_base_url.for_region(region),  # type: ignore[arg-type]
        tokens,
    )
    rerun: list[dict[str, Any]] = []
    if rerun_failed and marked_at is not None:
        async with services.pool.acquire() as connection, connection.transaction():
            rerun = await rerun_failed_for_reauth(connection, user_id, marked_at)
    return {
        "email": email,
        "cleared_mark": marked_at is not None,
        "accounts": [{"account_id": a.account_id, "name": a.account_name} for a in accounts],
        "rerun": rerun,
    }
