"""Which Snowflake failures heal with a retry, and what to tell a person about the others."""

from __future__ import annotations

from dataclasses import dataclass


class SnowflakeLoadError(Exception):
    def __init__(self, message: str, *, transient: bool, step: str) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.step = step


@dataclass(frozen=True)
class SnowflakeFailure:
    transient: bool
    code: int | None
    message: str


# errno → what to tell the person who must act. All are permanent.
_PERMANENT: dict[int, str] = {
    390100: "Snowflake rejected the user name or password: fix them with `recomamp snowflake set`",
    390144: "Snowflake rejected the key-pair login (JWT): check that the user's RSA_PUBLIC_KEY matches the "
    "private key stored with `recomamp snowflake set`",
    390191: "Snowflake rejected the login: check the user and its authentication method",
    390201: "Snowflake says the database or schema in the configuration does not exist, or the role may not use it",
    390318: "Snowflake rejected the login: the user is locked or disabled",
    2003: "a Snowflake object does not exist, or the role may not see it: check the database, schema and table "
    "names, and the role's grants",
    3001: "the Snowflake role lacks a privilege it needs: grant it USAGE on the database and schema, and "
    "CREATE TABLE, INSERT, UPDATE, DELETE on the schema",
    2043: "a Snowflake object does not exist, or the role may not see it",
    606: "no active warehouse: set one in the user's Snowflake configuration, or give the user a default warehouse",
    251005: "the Snowflake user name is missing",
    251006: "the Snowflake password is missing",
}
# A statement past STATEMENT_TIMEOUT_IN_SECONDS: a warehouse that was slow once; a second time, it is the load.
STATEMENT_TIMEOUT = 630
# errno values that mean "try again later".
_TRANSIENT = frozenset({250001, 250003, 390114, 604, 251012})
# An HTTP 5xx the connector retried until its network timeout (the service failed for a while, or the
# emulator met a transaction conflict): the whole load starts again on a fresh connection.
_HTTP_5XX = frozenset({"InternalServerError", "BadGatewayError", "ServiceUnavailableError", "GatewayTimeoutError"})
# Statement aborted on a lock: too many waiters, or LOCK_TIMEOUT passed.
_LOCK_CONFLICT = frozenset({625})


def classify(exc: BaseException) -> SnowflakeFailure:
    errno = getattr(exc, "errno", None)
    code = errno if isinstance(errno, int) and errno > 0 else None
    text = str(getattr(exc, "msg", None) or exc)
    name = type(exc).__name__
    if code in _PERMANENT:
        return SnowflakeFailure(False, code, f"{_PERMANENT[code]} (Snowflake error {code}: {text})")
    lowered = text.lower()
    if "warehouse" in lowered and ("suspended" in lowered or "resuming" in lowered):
        return SnowflakeFailure(True, code, f"the Snowflake warehouse is suspended or resuming: {text}")
    if code == STATEMENT_TIMEOUT:
        return SnowflakeFailure(
            True,
            code,
            f"a Snowflake statement ran past [snowflake] statement_timeout_seconds (Snowflake error 630: {text}); "
            "a larger warehouse, or a longer timeout, lets it finish",
        )
    if is_lock_conflict(exc):
        # Another session holds the rows (a load of the same run by another claim, or a reader's lock):
        # the whole load starts again, and its ledger check sees what the other one committed.
        return SnowflakeFailure(True, code, f"another Snowflake transaction holds the rows this load writes: {text}")
    if (
        code in _TRANSIENT
        or name in ("OperationalError", "InterfaceError")
        or name in _HTTP_5XX
        or isinstance(exc, OSError | TimeoutError)
    ):
        return SnowflakeFailure(True, code, f"Snowflake could not be reached or failed for a moment ({name}: {text})")
    return SnowflakeFailure(False, code, f"Snowflake refused the load ({name}: {text})")


def is_lock_conflict(exc: BaseException) -> bool:
    """Another open transaction holds the rows this statement writes (Snowflake's 000625, past LOCK_TIMEOUT)."""
    errno = getattr(exc, "errno", None)
    text = str(getattr(exc, "msg", None) or exc).lower()
    return errno in _LOCK_CONFLICT or "conflict on" in text or "lock wait" in text


def is_missing_object(exc: BaseException, name: str) -> bool:
    """Snowflake's 002003 (does not exist, or not authorized) for the object `name`."""
    return getattr(exc, "errno", None) == 2003 and name.upper() in str(getattr(exc, "msg", None) or exc).upper()
