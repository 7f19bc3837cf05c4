"""The shipped unit: hardened, valid, and consistent with the daemon's config."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recomamp.config import DaemonSettings
from recomamp.daemon.process import EXIT_START_CHECK_FAILED

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "recomamp.service"
TEMPLATE = UNIT.with_name("recomamp@.service")  # several replicas on one host
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def _settings(unit: Path = UNIT) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
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
    # A failed start-up check (a taken port) exits 78 before READY=1: no restart loop.
    assert settings["RestartPreventExitStatus"] == [str(EXIT_START_CHECK_FAILED)]
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


def test_each_templated_instance_has_its_own_config_socket_and_spool_and_the_rest_is_the_units() -> None:
    single, template = _settings(), _settings(TEMPLATE)
    assert template["ExecStart"] == ["/opt/recomamp/venv/bin/recomamp run --config /etc/recomamp/%i.toml"]
    assert template["ExecStartPre"] == ["/opt/recomamp/venv/bin/recomamp check-config /etc/recomamp/%i.toml"]
    # Not under /run/recomamp, which systemd empties when recomamp.service stops.
    assert template["RuntimeDirectory"] == ["recomamp-%i"]
    assert template["StateDirectory"] == ["recomamp/%i"]
    assert template["SyslogIdentifier"] == ["recomamp@%i"]
    assert "HOME=/var/lib/recomamp/%i" in template["Environment"][1].split()
    per_instance = {
        "Description",
        "ExecStart",
        "ExecStartPre",
        "RuntimeDirectory",
        "StateDirectory",
        "SyslogIdentifier",
    }
    for key in sorted((single.keys() | template.keys()) - per_instance - {"Environment"}):
        assert template.get(key) == single.get(key), f"{key}= differs between recomamp.service and recomamp@.service"
    assert template["Environment"][0] == single["Environment"][0]


@needs_analyze
@pytest.mark.parametrize("unit", [UNIT, TEMPLATE], ids=["recomamp.service", "recomamp@.service"])
def test_security_exposure_is_at_most_1_5(unit: Path, tmp_path: Path) -> None:
    path = tmp_path / unit.name.replace("@.", "@a.")  # an instance of the template: what systemd scores
    path.write_text(unit.read_text())
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(path)], capture_output=True, text=True, check=False
    )
    match = re.search(rf"Overall exposure level for {re.escape(path.name)}: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 1.5


@needs_analyze
@pytest.mark.parametrize("source", [UNIT, TEMPLATE], ids=["recomamp.service", "recomamp@.service"])
def test_systemd_analyze_verify_is_clean(source: Path, tmp_path: Path) -> None:
    # verify checks that ExecStart= exists: point it at this checkout's installed command.
    installed = Path(sys.executable).parent / "recomamp"
    unit = tmp_path / source.name.replace("@.", "@a.")
    unit.write_text(source.read_text().replace("/opt/recomamp/venv/bin/recomamp", str(installed)))
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
