"""The shipped unit: hardened, valid, and consistent with the daemon's config."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recomamp.config import DaemonSettings

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "recomamp.service"
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def _settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_has_what_operators_rely_on() -> None:
    settings = _settings()
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    assert settings["KillMode"] == ["mixed"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["SyslogIdentifier"] == ["recomamp"]
    # No credential reaches ExecReload= on systemd 252: the reload client asks the daemon, which has them.
    assert settings["ExecReload"] == ["/opt/recomamp/venv/bin/recomamp reload"]
    assert settings["RuntimeDirectory"] == ["recomamp"]  # where the control socket lives
    assert settings["LimitCORE"] == ["0"]  # no core dump of decrypted secrets on a watchdog abort
    assert settings["TimeoutStartSec"] == ["infinity"]  # it waits for the database before READY=1
    assert "HOME=/var/lib/recomamp" in settings["Environment"][1].split()
    assert {c.split(":")[0] for c in settings["LoadCredential"]} == {
        "token-key",
        "amazon-client-secret",
        "database-dsn",
    }
    stop_seconds = int(settings["TimeoutStopSec"][0].removesuffix("s"))
    assert stop_seconds > DaemonSettings().drain_timeout_seconds


@needs_analyze
def test_security_exposure_is_at_most_1_5() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNIT)], capture_output=True, text=True, check=False
    )
    match = re.search(r"Overall exposure level for recomamp\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 1.5


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    # verify checks that ExecStart= exists: point it at this checkout's installed command.
    installed = Path(sys.executable).parent / "recomamp"
    unit = tmp_path / "recomamp.service"
    unit.write_text(UNIT.read_text().replace("/opt/recomamp/venv/bin/recomamp", str(installed)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_the_notifier_never_blocks_on_a_receiver_that_does_not_read(tmp_path: Path) -> None:
    """sd_notify runs on the event loop: a full socket queue drops a message, it never blocks the daemon."""
    import socket
    import threading

    from recomamp.systemd import Notifier

    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))  # and never read: its queue fills up
    done = threading.Event()

    def flood() -> None:
        notifier = Notifier(str(path))
        for _ in range(5000):
            notifier.watchdog()
        done.set()

    worker = threading.Thread(target=flood, daemon=True)
    worker.start()
    try:
        assert done.wait(20), "Notifier.send blocked on a full queue"
        assert receiver.recv(100) == b"WATCHDOG=1"  # what fitted was delivered
    finally:
        receiver.close()
