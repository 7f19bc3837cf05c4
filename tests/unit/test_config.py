from __future__ import annotations

from pathlib import Path

import pytest

from recomamp.cli import main
from recomamp.config import ConfigError, changed_keys, load_config, restart_only
from tests.conftest import ConfigWriter


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    return excinfo.value.problems


def test_a_complete_config_loads_frozen(write_config: ConfigWriter) -> None:
    config = load_config(write_config(daemon={"max_concurrent_runs": 7}))
    assert config.daemon.max_concurrent_runs == 7
    assert config.amazon.client_secret.get_secret_value() == "test-client-secret-value"
    assert len(config.security.token_keys) == 1
    assert config.retry.lwa_server_error_waits == (5.0, 10.0, 20.0)
    assert config.retry.lwa_throttle_waits == (10.0, 20.0, 40.0)
    with pytest.raises(ValueError, match="frozen"):
        config.daemon.max_concurrent_runs = 3  # type: ignore[misc]


def test_a_missing_dsn_names_the_key(write_config: ConfigWriter) -> None:
    path = write_config()
    path.write_text(path.read_text().replace('dsn = "postgresql://u:p@localhost/db"', ""))
    assert any(p.startswith("database: dsn is missing") for p in _problems(path))


def test_a_malformed_url_names_the_key(write_config: ConfigWriter) -> None:
    problems = _problems(write_config(dsn="mysql://u:secretpw@h/db", amazon={"token_url": "not a url"}))
    assert any(p.startswith("database.dsn: must be a URL that starts with postgresql://") for p in problems)
    assert any(p.startswith("amazon.token_url: must be an http:// or https:// URL") for p in problems)
    assert not any("secretpw" in p for p in problems)


def test_an_unknown_key_is_reported_as_a_typo(write_config: ConfigWriter) -> None:
    problems = _problems(write_config(daemon={"poll_intervall_seconds": 5}))
    assert problems == [
        "daemon.poll_intervall_seconds: unknown key (a typo?); see `recomamp example-config` for the keys there are"
    ]


def test_a_negative_concurrency_names_the_key(write_config: ConfigWriter) -> None:
    problems = _problems(write_config(daemon={"max_concurrent_runs": -1}))
    assert problems == ["daemon.max_concurrent_runs: Input should be greater than or equal to 1"]


def test_a_missing_secret_file_names_the_key(write_config: ConfigWriter, tmp_path: Path) -> None:
    problems = _problems(write_config(amazon={"client_secret_file": str(tmp_path / "nope")}))
    assert problems == [f"amazon: client_secret_file: the file {tmp_path / 'nope'} does not exist"]


def test_every_problem_is_reported_at_once(write_config: ConfigWriter) -> None:
    problems = _problems(write_config(dsn="http://x", daemon={"max_concurrent_runs": 0, "typo": 1}))
    assert len(problems) == 3


def test_a_missing_token_key_refuses_with_how_to_make_one(write_config: ConfigWriter) -> None:
    path = write_config()
    path.write_text("\n".join(line for line in path.read_text().splitlines() if "token_key_file" not in line))
    (problem,) = _problems(path)
    assert problem.startswith("security: no token encryption key")
    assert "recomamp keygen" in problem


def test_a_bad_token_key_is_refused(write_config: ConfigWriter) -> None:
    path = write_config()
    (path.parent / "token.key").write_text("not-a-fernet-key\n")
    assert _problems(path) == [
        "security.token_keys: key 1 is not a Fernet key (32 url-safe base64-encoded bytes); "
        "make one with `recomamp keygen`"
    ]


def test_the_environment_overrides_the_file(write_config: ConfigWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECOMAMP_DATABASE__DSN", "postgresql://other@db.example/recomamp")
    monkeypatch.setenv("RECOMAMP_DAEMON__POLL_INTERVAL_SECONDS", "2.5")
    config = load_config(write_config())
    assert config.database.dsn.get_secret_value() == "postgresql://other@db.example/recomamp"
    assert config.daemon.poll_interval_seconds == 2.5


def test_secrets_come_from_the_systemd_credentials_directory(
    write_config: ConfigWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token_key: str
) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "database-dsn").write_text("postgresql://svc:pw@db/recomamp\n")
    (credentials / "amazon-client-secret").write_text("from-credential\n")
    (credentials / "token-key").write_text(token_key + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    path = tmp_path / "minimal.toml"
    path.write_text('[database]\n[amazon]\nclient_id = "cid"\n[security]\n')
    config = load_config(path)
    assert config.database.dsn.get_secret_value() == "postgresql://svc:pw@db/recomamp"
    assert config.amazon.client_secret.get_secret_value() == "from-credential"


def test_changed_keys_names_keys_never_values(write_config: ConfigWriter) -> None:
    old = load_config(write_config())
    new = load_config(write_config(dsn="postgresql://u:NEWPASS@localhost/db", daemon={"poll_interval_seconds": 1}))
    keys = changed_keys(old, new)
    assert keys == ["daemon.poll_interval_seconds", "database.dsn"]
    assert restart_only(keys) == ["database.dsn"]


def test_check_config_exits_0_or_2_with_every_problem(
    write_config: ConfigWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_config()
    assert main(["check-config", str(good)]) == 0
    bad = write_config(daemon={"max_concurrent_runs": -3, "typo_key": True})
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "daemon.max_concurrent_runs" in err
    assert "daemon.typo_key: unknown key" in err


def test_the_shipped_example_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token_key: str) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "database-dsn").write_text("postgresql://recomamp@localhost/recomamp\n")
    (credentials / "amazon-client-secret").write_text("secret\n")
    (credentials / "token-key").write_text(token_key + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    example = Path(__file__).resolve().parents[2] / "systemd" / "recomamp.toml"
    config = load_config(example)
    assert config.daemon.drain_timeout_seconds > 0
