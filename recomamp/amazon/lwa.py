"""Login with Amazon: one token-endpoint call per method (a refresh, or an authorization-code exchange).
Retrying is the token service's job; classification is `domain.retry.classify_lwa_response`'s."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import SecretStr

from recomamp.domain.retry import (
    AttemptFailure,
    FailureKind,
    classify_lwa_response,
    classify_network_exception,
)

# Network failures that a retry may heal. aiohttp raises ServerDisconnectedError, ClientOSError and
# friends (all ClientError) and asyncio.TimeoutError for a response that hangs past the timeout.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


class LwaAttemptFailed(Exception):
    def __init__(self, failure: AttemptFailure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


@dataclass(frozen=True)
class TokenGrant:
    access_token: str
    refresh_token: str | None  # None when LWA sent none back: keep the stored one
    expires_in_seconds: int


class LwaClient:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        token_url: str,
        client_id: str,
        client_secret: SecretStr,
        timeout_seconds: float,
    ) -> None:
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    @property
    def client_id(self) -> str:
        return self._client_id

    async def refresh(self, refresh_token: str) -> TokenGrant:
        return await self._grant({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def exchange_code(self, code: str, *, redirect_uri: str, code_verifier: str) -> TokenGrant:
        """The authorization-code grant: a code from the consent redirect becomes a refresh token."""
        return await self._grant(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
            }
        )

    async def _grant(self, form: dict[str, str]) -> TokenGrant:
        form = {**form, "client_id": self._client_id, "client_secret": self._client_secret.get_secret_value()}
        try:
            async with self._http.post(self._token_url, data=form, timeout=self._timeout) as response:
                text = await response.text()
                if response.status != 200:
                    raise LwaAttemptFailed(
                        classify_lwa_response(response.status, _json_object(text), response.headers.get("Retry-After"))
                    )
        except NETWORK_ERRORS as exc:
            raise LwaAttemptFailed(classify_network_exception(exc)) from exc
        return parse_grant(text)


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _seconds(value: object) -> int | None:
    """`expires_in` is a number in most of Amazon's examples and a string ("3600") in one: accept both."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def parse_grant(text: str) -> TokenGrant:
    body = _json_object(text) or {}
    access = body.get("access_token")
    expires_in = _seconds(body.get("expires_in"))
    refresh = body.get("refresh_token")
    if not isinstance(access, str) or not access or expires_in is None:
        raise LwaAttemptFailed(
            AttemptFailure(
                kind=FailureKind.BAD_RESPONSE,
                http_status=200,
                error_description="the answer has no access_token or no expires_in in seconds",
            )
        )
    # Tokens are not registered for redaction one by one: the Atza|/Atzr| shape catches every one of
    # them, and a registry of every token a daemon ever refreshed would grow for months.
    return TokenGrant(
        access_token=access,
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        expires_in_seconds=expires_in,
    )
