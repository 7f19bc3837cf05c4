"""The daemon's configuration: one TOML file, overridable from the environment, parsed into frozen models.

Secrets are `SecretStr`. Each can come from the TOML file, from a file named by a `*_file` key,
or from systemd's `$CREDENTIALS_DIRECTORY` (`LoadCredential=`), never from the command line.
A reload builds a whole new `Config`; nothing here is module-level state.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from recomamp.domain.runs import Region

DEFAULT_CONFIG_PATH = Path("/etc/recomamp/recomamp.toml")
ENV_PREFIX = "RECOMAMP_"

# Names of the systemd credentials (LoadCredential=NAME:PATH) that stand in for secret keys.
CREDENTIAL_DSN = "database-dsn"
CREDENTIAL_CLIENT_SECRET = "amazon-client-secret"  # noqa: S105 - a credential's name, not its value
CREDENTIAL_TOKEN_KEY = "token-key"  # noqa: S105 - a credential's name, not its value

LogLevel = Literal["debug", "info", "warning", "error"]


class ConfigError(Exception):
    """The configuration cannot be used. `problems` holds one line per problem, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _credential_path(name: str) -> Path | None:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    return path if path.is_file() else None


def _read_secret_file(path: Path, key: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ValueError(f"{key}: the file {path} does not exist") from None
    except PermissionError:
        raise ValueError(f"{key}: the file {path} is not readable by this user") from None
    if not text:
        raise ValueError(f"{key}: the file {path} is empty")
    return text


def _resolve_secret(
    data: Any,
    key: str,
    *,
    file_key: str,
    missing: str,
    credential: str | None = None,
    credential_key: str | None = None,
    parse: Callable[[str], Any] = str,
) -> Any:
    """The one place a secret's sources are tried, in order: `data[key]` inline; the file named by
    `data[file_key]`; the systemd credential, fixed (`credential`) or named by `data[credential_key]`, which
    must then exist. `missing` (the message that says what to set) when none gives it. The text read is
    stored as `parse(text)`. Used by each section's `mode="before"` validator, so `data` is raw input."""
    if not isinstance(data, dict) or data.get(key) is not None:
        return data
    data = dict(data)
    if credential_key is not None:
        credential = data.get(credential_key) or None
    if data.get(file_key) is not None:
        text = _read_secret_file(Path(str(data[file_key])), file_key)
    elif credential is not None and (path := _credential_path(str(credential))) is not None:
        text = _read_secret_file(path, f"$CREDENTIALS_DIRECTORY/{credential}")
    elif credential is not None and credential_key is not None:
        raise ValueError(f"{credential_key}: no systemd credential {credential!r} in $CREDENTIALS_DIRECTORY")
    else:
        raise ValueError(missing)
    data[key] = parse(text)
    return data


# The daemon's own tasks (poller, dispatcher, notification sender, metrics, housekeeping) have a small pool
# of their own, so they never queue behind thousands of runs; the heartbeat and the NOTIFY listener have a
# dedicated connection each.
OWN_POOL_CONNECTIONS = 4
# Runs hold a pooled connection for one statement at a time, never across a network call: beyond this
# many runs in flight, runs queue for a connection for a statement's time rather than open more.
RUN_POOL_CONNECTION_CAP = 16


def pool_size_needed(max_concurrent_runs: int) -> int:
    """The runs' pool: one connection per run in flight, up to the cap."""
    return min(max_concurrent_runs, RUN_POOL_CONNECTION_CAP)


class DatabaseSettings(_Section):
    dsn: SecretStr = Field(description="postgresql://user:password@host:port/dbname")
    dsn_file: Path | None = None
    pool_min_size: int = Field(default=1, ge=0)
    # None: sized from [daemon] max_concurrent_runs (pool_size_needed).
    pool_max_size: int | None = Field(default=None, ge=1)
    command_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    # While Postgres is unreachable, the daemon retries with waits growing to this, and logs once per change.
    outage_max_wait_seconds: float = Field(default=30.0, gt=0, le=600)

    @model_validator(mode="before")
    @classmethod
    def _secret_sources(cls, data: Any) -> Any:
        return _resolve_secret(
            data,
            "dsn",
            file_key="dsn_file",
            credential=CREDENTIAL_DSN,
            missing=f"dsn is missing: set [database] dsn, dsn_file, or the systemd credential '{CREDENTIAL_DSN}'",
        )

    @field_validator("dsn")
    @classmethod
    def _dsn_is_postgres_url(cls, value: SecretStr) -> SecretStr:
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError("must be a URL that starts with postgresql:// (the password is never shown)")
        return value

    @model_validator(mode="after")
    def _pool_sizes(self) -> DatabaseSettings:
        if self.pool_max_size is not None and self.pool_min_size > self.pool_max_size:
            raise ValueError("pool_min_size must not exceed pool_max_size")
        return self

    def pool_size(self, max_concurrent_runs: int) -> int:
        return self.pool_max_size if self.pool_max_size is not None else pool_size_needed(max_concurrent_runs)


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
    return value.rstrip("/")


class RegionUrls(_Section):
    """One http(s) URL per Amazon region; each subclass gives Amazon's own as the defaults."""

    na: str
    eu: str
    fe: str

    @field_validator("na", "eu", "fe")
    @classmethod
    def _urls(cls, value: str) -> str:
        return _check_http_url(value)

    def for_region(self, region: Region) -> str:
        url: str = getattr(self, region)
        return url


class AmcBaseUrls(RegionUrls):
    na: str = "https://advertising-api.amazon.com"
    eu: str = "https://advertising-api-eu.amazon.com"
    fe: str = "https://advertising-api-fe.amazon.com"


class ConsentUrls(RegionUrls):
    """Login with Amazon's consent page per region (../shared/AMC_API.md, "Authorization-code grant")."""

    na: str = "https://www.amazon.com/ap/oa"
    eu: str = "https://eu.account.amazon.com/ap/oa"
    fe: str = "https://apac.account.amazon.com/ap/oa"


class AmazonSettings(_Section):
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    client_secret_file: Path | None = None
    token_url: str = "https://api.amazon.com/auth/o2/token"  # noqa: S105 - a URL, not a secret
    amc_base_url: AmcBaseUrls = AmcBaseUrls()
    consent_url: ConsentUrls = ConsentUrls()
    # Must be one of the security profile's "Allowed Return URLs", exactly (Amazon matches it whole).
    redirect_uri: str = "http://localhost:8765/callback"
    request_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    token_refresh_margin_seconds: int = Field(default=300, ge=0, le=3000)
    amc_execution_timeout_seconds: int = Field(default=86_400, gt=0, le=7 * 86_400)

    @field_validator("token_url")
    @classmethod
    def _token_url(cls, value: str) -> str:
        return _check_http_url(value)

    @field_validator("redirect_uri")
    @classmethod
    def _redirect_uri(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL, exactly as registered with Amazon; got {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _secret_sources(cls, data: Any) -> Any:
        return _resolve_secret(
            data,
            "client_secret",
            file_key="client_secret_file",
            credential=CREDENTIAL_CLIENT_SECRET,
            missing="client_secret is missing: set [amazon] client_secret_file, "
            f"or the systemd credential '{CREDENTIAL_CLIENT_SECRET}'",
        )


class SecuritySettings(_Section):
    token_keys: tuple[SecretStr, ...] = Field(
        description="Fernet keys, newest first: the first encrypts, all of them decrypt"
    )
    token_key_file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _secret_sources(cls, data: Any) -> Any:
        return _resolve_secret(
            data,
            "token_keys",
            file_key="token_key_file",
            credential=CREDENTIAL_TOKEN_KEY,
            missing="no token encryption key: set [security] token_key_file, or the systemd credential "
            f"'{CREDENTIAL_TOKEN_KEY}'. Make one with `recomamp keygen`; recomamp never makes one itself",
            parse=lambda text: tuple(line.strip() for line in text.splitlines() if line.strip()),  # one a line
        )

    @field_validator("token_keys")
    @classmethod
    def _keys_are_fernet(cls, keys: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        from cryptography.fernet import Fernet

        if not keys:
            raise ValueError("the token key file holds no key")
        for index, key in enumerate(keys, start=1):
            try:
                Fernet(key.get_secret_value())
            except ValueError:
                raise ValueError(
                    f"key {index} is not a Fernet key (32 url-safe base64-encoded bytes); "
                    "make one with `recomamp keygen`"
                ) from None
        return keys


def _default_replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def default_spool_dir() -> Path:
    """Under the service's state directory (StateDirectory= sets $STATE_DIRECTORY), else the user's state home."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0]) / "spool"
    home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(home) / "recomamp" / "spool"


class DaemonSettings(_Section):
    poll_interval_seconds: float = Field(default=15.0, gt=0, le=3600)
    claim_batch_size: int = Field(default=200, ge=1, le=10_000)
    max_concurrent_runs: int = Field(default=20, ge=1, le=100_000)
    max_runs_per_instance: int = Field(default=10, ge=1, le=100_000)
    drain_timeout_seconds: float = Field(default=60.0, ge=0, le=3600)
    lease_seconds: float = Field(default=120.0, gt=0, le=3600)
    # None: lease_seconds / 3, so two renewals can fail before a lease runs out.
    heartbeat_interval_seconds: float | None = Field(default=None, gt=0)
    replica_name: str = Field(default_factory=_default_replica_name, min_length=1)
    # A run that failed for a transient reason (AMC or Snowflake down) is tried again after this delay,
    # up to max_run_attempts attempts in all. `recomamp run --once` does not wait: it fails such runs.
    max_run_attempts: int = Field(default=5, ge=1, le=100)
    run_retry_delay_seconds: float = Field(default=300.0, ge=0, le=86_400)
    # Result files are kept here, compressed, until they are loaded (default: the state directory).
    spool_dir: Path = Field(default_factory=default_spool_dir)
    # Kept this many days after a successful load too (0: deleted once loaded).
    keep_results_days: int = Field(default=0, ge=0, le=3650)
    # Above this, loaded results are pruned first and an error is logged; unloaded ones are never dropped.
    kept_results_max_mb: int = Field(default=10_240, ge=1)
    # Where `recomamp reload` reaches the running daemon (systemd's RuntimeDirectory=). Empty: off.
    control_socket: str = Field(default_factory=lambda: _runtime_path("control.sock"))

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "work_dir" in data:
            raise ValueError("work_dir was renamed spool_dir (results are kept there until they are loaded)")
        return data

    @model_validator(mode="after")
    def _heartbeat_inside_lease(self) -> DaemonSettings:
        if self.heartbeat_interval_seconds is not None and self.heartbeat_interval_seconds * 2 > self.lease_seconds:
            raise ValueError(
                "heartbeat_interval_seconds must be at most half of lease_seconds (a third is the default), so "
                "that one failed renewal does not lose the lease"
            )
        return self

    @property
    def heartbeat_seconds(self) -> float:
        return self.heartbeat_interval_seconds or self.lease_seconds / 3


def _runtime_path(name: str) -> str:
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    return str(Path(runtime.split(":")[0]) / name) if runtime else ""


class AmcSettings(_Section):
    # AMC runs ad-hoc executions at most this many times per rolling window per instance, across all
    # workflow ids ("30 per day at this time", Amazon's Postman collection). Every POST counts.
    adhoc_executions_per_day: int = Field(default=30, ge=1, le=100_000)
    quota_window_seconds: float = Field(default=86_400.0, gt=0, le=7 * 86_400)
    # When AMC refuses a POST for its quota although our count had room, submit nothing to it for this long.
    quota_refusal_backoff_seconds: float = Field(default=3600.0, ge=0, le=86_400)
    # AMC's list of executions may lag a POST: an uncertain POST is searched again after this.
    listing_lag_seconds: float = Field(default=10.0, ge=0, le=600)


Waits = tuple[float, ...]


class RetrySettings(_Section):
    """Backoff waits in seconds. Tests and the demo shorten them; production keeps the defaults."""

    lwa_max_attempts: int = Field(default=3, ge=1, le=10)
    lwa_server_error_waits: Waits = (5.0, 10.0, 20.0)
    lwa_throttle_waits: Waits = (10.0, 20.0, 40.0)
    lwa_network_waits: Waits = (5.0, 10.0, 20.0)
    retry_after_cap_seconds: float = Field(default=300.0, ge=0)
    amc_max_attempts: int = Field(default=5, ge=1)
    amc_waits: Waits = (2.0, 5.0, 15.0, 30.0, 60.0)
    amc_poll_initial_seconds: float = Field(default=30.0, gt=0)
    amc_poll_max_seconds: float = Field(default=300.0, gt=0)
    amc_poll_multiplier: float = Field(default=1.5, ge=1)
    snowflake_max_attempts: int = Field(default=3, ge=1)
    snowflake_waits: Waits = (5.0, 15.0, 45.0)

    @field_validator(
        "lwa_server_error_waits", "lwa_throttle_waits", "lwa_network_waits", "amc_waits", "snowflake_waits"
    )
    @classmethod
    def _waits_not_negative(cls, waits: Waits) -> Waits:
        if not waits:
            raise ValueError("give at least one wait")
        if any(wait < 0 for wait in waits):
            raise ValueError("waits must not be negative")
        return waits


class SnowflakeSettings(_Section):
    batch_rows: int = Field(default=50_000, ge=1, le=10_000_000)
    thread_pool_size: int = Field(default=4, ge=1, le=64)
    login_timeout_seconds: int = Field(default=30, ge=1, le=3600)
    network_timeout_seconds: int = Field(default=300, ge=1, le=3600)
    # Session parameters: Snowflake cancels a statement past this, and a wait for a lock past that.
    statement_timeout_seconds: int = Field(default=3600, ge=1, le=172_800)
    lock_timeout_seconds: int = Field(default=600, ge=1, le=172_800)
    # A whole load (every batch, every retry) past this is cut off: the Snowflake step fails with a message
    # that names `recomamp runs retry-upload`, and nothing is committed after it.
    load_timeout_seconds: float = Field(default=7200.0, gt=0, le=172_800)


class MetricsSettings(_Section):
    # host:port for /metrics, /healthz and /readyz. Empty: off. A change needs a restart.
    listen: str = "127.0.0.1:9464"
    # How often the gauges that come from the database (quota, users needing re-authentication…) are read.
    refresh_seconds: float = Field(default=15.0, gt=0, le=3600)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if not value:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"must be HOST:PORT (for example 127.0.0.1:9464), or empty to turn it off; got {value!r}")
        return value


WEBHOOK_EVENTS = (
    "user_needs_reauth",
    "schedule_auto_paused",
    "run_failed",
    "run_recovered",
    "quota_exhausted",
    "schedule_late",
    "schedule_recovered",
)


class WebhookTarget(_Section):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    # The URL is a secret (a Slack webhook's path is its password): inline, from url_file, or from the
    # systemd credential named by url_credential. Logs show its scheme and host only.
    url: SecretStr
    url_file: Path | None = None
    url_credential: str | None = None
    format: Literal["json", "slack"] = "json"
    events: tuple[str, ...] = WEBHOOK_EVENTS
    # run_failed: only these error kinds (empty: all), and at most one per schedule per interval.
    run_failed_kinds: tuple[str, ...] = ()
    run_failed_min_interval_seconds: float = Field(default=3600.0, ge=0, le=7 * 86_400)
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    @model_validator(mode="before")
    @classmethod
    def _secret_sources(cls, data: Any) -> Any:
        return _resolve_secret(
            data,
            "url",
            file_key="url_file",
            credential_key="url_credential",
            missing="url is missing: set url, url_file or url_credential",
        )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: SecretStr) -> SecretStr:
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL (it is a secret: not shown)")
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [event for event in value if event not in WEBHOOK_EVENTS]
        if unknown:
            raise ValueError(f"unknown event(s) {', '.join(unknown)}; events are {', '.join(WEBHOOK_EVENTS)}")
        return value

    @property
    def safe_url(self) -> str:
        """The URL with its path hidden: what logs and `notify test` show."""
        parts = urlsplit(self.url.get_secret_value())
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/…"


class NotifySettings(_Section):
    webhook: tuple[WebhookTarget, ...] = ()
    max_attempts: int = Field(default=8, ge=1, le=100)
    retry_waits: Waits = (5.0, 30.0, 120.0, 600.0, 1800.0)

    @model_validator(mode="after")
    def _unique_names(self) -> NotifySettings:
        names = [target.name for target in self.webhook]
        if len(set(names)) != len(names):
            raise ValueError("webhook names must be unique")
        return self


class LoggingSettings(_Section):
    level: LogLevel = "info"


class Config(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    database: DatabaseSettings
    amazon: AmazonSettings
    security: SecuritySettings
    daemon: DaemonSettings = DaemonSettings()
    amc: AmcSettings = AmcSettings()
    retry: RetrySettings = RetrySettings()
    snowflake: SnowflakeSettings = SnowflakeSettings()
    metrics: MetricsSettings = MetricsSettings()
    notify: NotifySettings = NotifySettings()
    logging: LoggingSettings = LoggingSettings()

    @model_validator(mode="before")
    @classmethod
    def _sections_from_credentials(cls, data: Any) -> Any:
        """[database] and [security] may be left out when their secrets come from systemd credentials: the
        section's own check then says what is missing (not "required key is missing")."""
        if isinstance(data, dict):
            data = dict(data)
            for section in ("database", "security"):
                data.setdefault(section, {})
        return data

    @model_validator(mode="after")
    def _pool_fits_the_runs(self) -> Config:
        needed = pool_size_needed(self.daemon.max_concurrent_runs)
        if self.database.pool_max_size is not None and self.database.pool_max_size < needed:
            raise ValueError(
                f"database.pool_max_size: {self.database.pool_max_size} is too small for [daemon] "
                f"max_concurrent_runs = {self.daemon.max_concurrent_runs}: the runs' pool needs {needed} "
                f"(one per run in flight, up to {RUN_POOL_CONNECTION_CAP}; the daemon's own tasks have "
                f"{OWN_POOL_CONNECTIONS} more of their own). Raise it, or leave it out to size the pool from "
                "max_concurrent_runs"
            )
        return self

    @property
    def pool_size(self) -> int:
        return self.database.pool_size(self.daemon.max_concurrent_runs)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment outranks the file: an override has to win.
        return (env_settings, init_settings)


def _format_error(error: Mapping[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if not location:
        # A check across sections names its own key at the start of the message.
        return message
    if error["type"] == "extra_forbidden":
        message = "unknown key (a typo?); see `recomamp example-config` for the keys there are"
    elif error["type"] == "missing":
        message = "required key is missing"
    return f"{location}: {message}"


def parse_config(data: Mapping[str, Any]) -> Config:
    """Validate a parsed TOML document (plus the environment) into a `Config`, or raise `ConfigError`."""
    try:
        return Config(**data)
    except ValidationError as exc:
        problems = [_format_error(error) for error in exc.errors(include_url=False, include_input=False)]
        raise ConfigError(problems) from None


def load_config(path: Path) -> Config:
    """Read the TOML file at `path` and validate it. Every problem is reported, each with its key."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{path}: the config file does not exist (pass --config PATH)"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: the config file is not readable by this user"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_config(data)


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted names of the keys whose values differ. Values are never returned: some are secrets."""

    def flatten(model: BaseModel, prefix: str) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for name in type(model).model_fields:
            value = getattr(model, name)
            key = f"{prefix}{name}"
            if isinstance(value, BaseModel):
                flat.update(flatten(value, key + "."))
            elif isinstance(value, SecretStr):
                flat[key] = value.get_secret_value()
            elif isinstance(value, tuple):
                flat[key] = tuple(v.get_secret_value() if isinstance(v, SecretStr) else v for v in value)
            else:
                flat[key] = value
        return flat

    before, after = flatten(old, ""), flatten(new, "")
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


# Keys that only take effect on a restart; a reload reports them and leaves them alone. [security] is not
# among them: a reload puts a new token key first while the old ones still decrypt (key rotation).
RESTART_ONLY_PREFIXES = (
    "database.",
    "daemon.replica_name",
    "daemon.spool_dir",
    "daemon.control_socket",
    "snowflake.thread_pool_size",
    "metrics.listen",
)


def restart_only(keys: list[str]) -> list[str]:
    return [key for key in keys if key.startswith(RESTART_ONLY_PREFIXES)]
