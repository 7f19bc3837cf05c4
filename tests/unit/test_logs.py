from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from recomamp.logs import configure_logging, get_logger, register_secret


@pytest.fixture
def output(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    configure_logging("debug", stream=stream)
    yield stream
    structlog.contextvars.clear_contextvars()


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_is_json_with_event_timestamp_level_and_context(output: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(user_email="a@example.com", schedule_id=3, run_id=9, attempt=2)
    get_logger("t").info("token_refresh_failed", http_status=503)
    (line,) = _lines(output)
    assert line["event"] == "token_refresh_failed"
    assert line["level"] == "info"
    assert str(line["timestamp"]).endswith("Z")
    assert (line["user_email"], line["schedule_id"], line["run_id"], line["attempt"]) == ("a@example.com", 3, 9, 2)


def test_planted_secrets_never_reach_the_output(output: io.StringIO) -> None:
    access = "Atza|IwEBIJ" + "x" * 360
    refresh = "Atzr|IwEBIK" + "y" * 300
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
    snowflake_password = "hunter2-snowflake"
    register_secret(snowflake_password)
    log = get_logger("t")
    log.info("token_refreshed", access_token=access, refresh_token=refresh)
    log.info("request_sent", body=f"grant_type=refresh_token&refresh_token={refresh}&client_secret=shh-123")
    log.info("connecting", dsn="postgresql://recomamp:pg-pass-42@db:5432/recomamp")
    log.info("response", detail=f"server said: token {access} is bad", headers={"Authorization": f"Bearer {access}"})
    log.info("snowflake_connect", config={"password": snowflake_password, "private_key": pem, "user": "LOADER"})
    log.info("free_text", note=f"the password is {snowflake_password} and the key {pem}")
    text = output.getvalue()
    for secret in (access, refresh, "IwEBI", "shh-123", "pg-pass-42", snowflake_password, "MIIEvQIBADAN"):
        assert secret not in text
    assert "LOADER" in text
    assert text.count("[REDACTED]") >= 9


def test_tracebacks_carry_no_local_variables(output: io.StringIO) -> None:
    def explode() -> None:
        refresh_token = "Atzr|local-variable-secret"  # noqa: F841 - a local a traceback might show
        raise RuntimeError("boom")

    try:
        explode()
    except RuntimeError:
        get_logger("t").exception("run_crashed")
    (line,) = _lines(output)
    assert "local-variable-secret" not in output.getvalue()
    assert line["exception"][0]["exc_type"] == "RuntimeError"  # type: ignore[index]


def test_library_logs_go_through_the_same_renderer(output: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(run_id=5)
    logging.getLogger("asyncpg.pool").warning("connection to postgresql://u:libpass@h/db lost")
    (line,) = _lines(output)
    assert line["event"] == "library_log"
    assert line["logger"] == "asyncpg.pool"
    assert line["level"] == "warning"
    assert line["run_id"] == 5
    assert "libpass" not in output.getvalue()


def test_journald_lines_start_with_the_syslog_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    stream = io.StringIO()
    configure_logging("debug", stream=stream)
    log = get_logger("t")
    log.error("e")
    log.warning("w")
    log.info("i")
    log.debug("d")
    prefixes = [line[:3] for line in stream.getvalue().splitlines()]
    assert prefixes == ["<3>", "<4>", "<6>", "<7>"]
    assert json.loads(stream.getvalue().splitlines()[0][3:])["event"] == "e"


def test_the_level_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    configure_logging("warning", stream=stream)
    get_logger("t").info("hidden")
    get_logger("t").warning("shown")
    assert [line["event"] for line in _lines(stream)] == ["shown"]
