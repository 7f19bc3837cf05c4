"""How a failed call is classified, whether it is retried, and how long to wait. No I/O here."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Protocol


class FailureKind(StrEnum):
    REAUTH_REQUIRED = "reauth_required"  # the user's refresh token is invalid, expired or revoked
    CLIENT_CREDENTIALS = "client_credentials"  # the operator's LWA client id or secret is wrong
    CLIENT_CONFIGURATION = "client_configuration"  # the LWA security profile may not use this grant
    SERVER_ERROR = "server_error"  # 5xx
    THROTTLED = "throttled"  # 429
    NETWORK = "network"  # timeout, refused or dropped connection
    BAD_RESPONSE = "bad_response"  # a 200 whose body is not a token


RETRYABLE = frozenset({FailureKind.SERVER_ERROR, FailureKind.THROTTLED, FailureKind.NETWORK})
SERVER_ERROR_STATUSES = frozenset({500, 502, 503, 504})

# LWA error codes, classified before the HTTP status (OAuth lets a server answer most of them with 400
# or 401). Only invalid_grant is about the user's consent; the others are the operator's (or our) problem
# and must never mark a user for re-authentication.
_USER_GRANT_CODES = frozenset({"invalid_grant"})
_CLIENT_CREDENTIAL_CODES = frozenset({"invalid_client"})
_CLIENT_CONFIGURATION_CODES = frozenset(
    {"unauthorized_client", "unsupported_grant_type", "invalid_request", "invalid_scope", "unsupported_response_type"}
)


@dataclass(frozen=True)
class AttemptFailure:
    """One failed attempt at a call, classified."""

    kind: FailureKind
    http_status: int | None = None
    error_code: str | None = None
    error_description: str | None = None
    exception_class: str | None = None
    retry_after_seconds: float | None = None

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    @property
    def reason(self) -> str:
        """A short cause for log lines and messages: 'HTTP 503 server_error', 'TimeoutError'."""
        if self.http_status is not None:
            return f"HTTP {self.http_status}" + (f" {self.error_code}" if self.error_code else "")
        return self.exception_class or self.kind.value


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def classify_lwa_response(status: int, body: Mapping[str, Any] | None, retry_after: str | None) -> AttemptFailure:
    """Classify a non-200 answer from the LWA token endpoint."""
    body = body or {}
    code = body.get("error") if isinstance(body.get("error"), str) else None
    description = body.get("error_description") if isinstance(body.get("error_description"), str) else None
    if code in _USER_GRANT_CODES:
        kind = FailureKind.REAUTH_REQUIRED
    elif code in _CLIENT_CREDENTIAL_CODES:
        kind = FailureKind.CLIENT_CREDENTIALS
    elif code in _CLIENT_CONFIGURATION_CODES:
        kind = FailureKind.CLIENT_CONFIGURATION
    elif status == 429:
        kind = FailureKind.THROTTLED
    elif status in SERVER_ERROR_STATUSES or status >= 500:
        kind = FailureKind.SERVER_ERROR
    elif status == 401:
        kind = FailureKind.CLIENT_CREDENTIALS
    else:
        # A refusal without a code we know: ours to investigate. Marking the user here could mark every
        # user at once over a misconfiguration of our own.
        kind = FailureKind.CLIENT_CONFIGURATION
    return AttemptFailure(
        kind=kind,
        http_status=status,
        error_code=code,
        error_description=description,
        retry_after_seconds=parse_retry_after(retry_after) if kind is FailureKind.THROTTLED else None,
    )


def classify_network_exception(exc: BaseException) -> AttemptFailure:
    return AttemptFailure(kind=FailureKind.NETWORK, exception_class=type(exc).__name__)


def _from_table(waits: Sequence[float], attempt: int) -> float:
    if not waits:
        return 0.0
    return float(waits[min(attempt, len(waits)) - 1])


@dataclass(frozen=True)
class BackoffPolicy:
    """The waits after a failed attempt, by kind. `attempt` is the 1-based number of the attempt that failed."""

    server_error_waits: Sequence[float]
    throttle_waits: Sequence[float]
    network_waits: Sequence[float]
    retry_after_cap_seconds: float

    def wait_after(self, failure: AttemptFailure, attempt: int) -> float:
        if failure.kind is FailureKind.THROTTLED:
            if failure.retry_after_seconds is not None:
                return min(failure.retry_after_seconds, self.retry_after_cap_seconds)
            return _from_table(self.throttle_waits, attempt)
        if failure.kind is FailureKind.SERVER_ERROR:
            return _from_table(self.server_error_waits, attempt)
        if failure.kind is FailureKind.NETWORK:
            return _from_table(self.network_waits, attempt)
        return 0.0


def token_failure_message(failure: AttemptFailure, attempts: int, email: str = "USER_EMAIL") -> tuple[bool, str]:
    """(permanent, message) for the run's history: what happened, whether it heals, who must act."""
    cause = failure.reason
    if failure.error_description:
        cause += f": {failure.error_description}"
    if failure.kind is FailureKind.REAUTH_REQUIRED:
        return True, (
            f"User needs to re-authenticate via Amazon OAuth. Login with Amazon rejected the refresh token "
            f"({cause}). Permanent: the user must sign in with Amazon again (`recomamp users authorize {email} "
            f"--rerun-failed`); until then this user's runs fail without calling Amazon."
        )
    if failure.kind is FailureKind.CLIENT_CREDENTIALS:
        return True, (
            f"Login with Amazon rejected recomamp's client credentials ({cause}). Permanent, and not the user's "
            "fault: an operator must fix [amazon] client_id and client_secret, then reload. The user's token "
            "was left as it is."
        )
    if failure.kind is FailureKind.CLIENT_CONFIGURATION:
        return True, (
            f"Login with Amazon refused recomamp's request ({cause}). Permanent, and not the user's fault: an "
            "operator must check the LWA security profile ([amazon] client_id, its allowed grant types and return "
            "URLs) and [amazon] token_url. The user was not marked."
        )
    if failure.kind is FailureKind.BAD_RESPONSE:
        return False, (
            f"Login with Amazon answered with something that is not a token ({cause}). Temporary: it will be "
            "tried again on the next run; if it persists, check [amazon] token_url."
        )
    return False, (
        f"Token refresh failed after {attempts} attempt(s); the last failed with {cause}. Temporary: Amazon "
        "or the network had a problem, and the refresh will be tried again on the next run. Nobody needs to "
        "act unless it persists."
    )


class TokenError(Exception):
    """No usable access token. `permanent` says whether someone must act; the message says who and what."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        permanent: bool,
        attempts: int = 0,
        failure: AttemptFailure | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.permanent = permanent
        self.attempts = attempts
        self.failure = failure


class LwaRetrySettings(Protocol):
    """What the token policy reads of `config.RetrySettings` (named here so that domain/ imports no config)."""

    @property
    def lwa_max_attempts(self) -> int: ...
    @property
    def lwa_server_error_waits(self) -> Sequence[float]: ...
    @property
    def lwa_throttle_waits(self) -> Sequence[float]: ...
    @property
    def lwa_network_waits(self) -> Sequence[float]: ...
    @property
    def retry_after_cap_seconds(self) -> float: ...


@dataclass(frozen=True)
class TokenPolicy:
    """How a token refresh is retried, and how early a token is refreshed before it expires."""

    max_attempts: int
    backoff: BackoffPolicy
    refresh_margin: timedelta
    request_timeout_seconds: float = 30.0

    @classmethod
    def from_settings(
        cls, retry: LwaRetrySettings, refresh_margin_seconds: int, request_timeout_seconds: float = 30.0
    ) -> TokenPolicy:
        return cls(
            max_attempts=retry.lwa_max_attempts,
            backoff=BackoffPolicy(
                server_error_waits=retry.lwa_server_error_waits,
                throttle_waits=retry.lwa_throttle_waits,
                network_waits=retry.lwa_network_waits,
                retry_after_cap_seconds=retry.retry_after_cap_seconds,
            ),
            refresh_margin=timedelta(seconds=refresh_margin_seconds),
            request_timeout_seconds=request_timeout_seconds,
        )

    @property
    def longest_refresh_seconds(self) -> float:
        """The longest a refresh can take (every attempt timing out, every wait at its longest): how long a replica
        waits on another's refresh before it gives up and the run is tried again."""
        longest_wait = max(
            max(self.backoff.server_error_waits, default=0.0),
            max(self.backoff.throttle_waits, default=0.0),
            max(self.backoff.network_waits, default=0.0),
            self.backoff.retry_after_cap_seconds,
        )
        return self.max_attempts * self.request_timeout_seconds + (self.max_attempts - 1) * longest_wait + 15.0
