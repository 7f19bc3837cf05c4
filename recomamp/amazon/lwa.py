"""Login with Amazon: one refresh_token grant per call. Retrying is the token service's job."""

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
from recomamp.logs import register_secret

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

    async def refresh(self, refresh_token: str) -> TokenGrant:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": self._client_id,
            "client_secret": self._client_secret.get_secret_value(),
        }
        try:
            async with self._http.post(self._token_url, data=form, timeout=self._timeout) as response:
                text = await response.text()
                if response.status != 200:
                    raise LwaAttemptFailed(
                        classify_lwa_response(response.status, _json_object(text), response.headers.get("Retry-After"))
                    )
        except NETWORK_ERRORS as exc:
            raise LwaAttemptFailed(classify_network_exception(exc)) from exc
        return _parse_grant(text)


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _parse_grant(text: str) -> TokenGrant:
    body = _json_object(text) or {}
    access = body.get("access_token")
    expires_in = body.get("expires_in")
    refresh = body.get("refresh_token")
    if not isinstance(access, str) or not access or not isinstance(expires_in, int | float):
        raise LwaAttemptFailed(
            AttemptFailure(
                kind=FailureKind.BAD_RESPONSE,
                http_status=200,
                error_description="the answer has no access_token or expires_in",
            )
        )
    register_secret(access)
    if isinstance(refresh, str) and refresh:
        register_secret(refresh)
    else:
        refresh = None
    return TokenGrant(access_token=access, refresh_token=refresh, expires_in_seconds=int(expires_in))
