"""The unit under a real systemd 252, as an operator uses it: `make systemd-check`.

It boots ../shared/tools/systemd-sandbox (systemd as PID 1 of isolated namespaces, loopback only), installs
the service the way the README says (`make install-systemd`, the credentials, `migrate up`), runs Debian's
Postgres 15 and the AMC/LWA simulator as transient units, and checks, each as an assertion:

- `systemctl start` → active (running) with a STATUS text; a healthy run and a revoked-token run finish;
- `journalctl -p err` holds only error lines, one per failure; every README `journalctl` recipe runs and
  returns what it promises;
- `systemctl reload` with a changed key → exit 0, the key logged; with a broken config → non-zero exit,
  the problems in the journal, the same main PID, the old config in force;
- `systemctl restart`; `systemctl stop` with a run in flight → drained, one summary line, Result=success;
- Postgres stopped for longer than a shortened WatchdogSec= → no watchdog kill, NRestarts=0, and the run
  finishes once Postgres is back;
- `systemd-analyze security recomamp` ≤ 1.5;
- two templated instances, recomamp@a and recomamp@b, each with its own config, metrics port and control
  socket: both active and ready, both claiming runs from the one database at the same time, and a reload of
  one (its journal says so) leaves the other's process, config and claiming alone; a third instance on a
  port another holds fails `systemctl start` once, with one line naming `[metrics] listen`, and no restart.

The service venv is a regular (non-editable) install of this checkout, built on the host (the sandbox
reaches no package index) from a Python the service user can execute.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SDBOX = ROOT.parent / "shared" / "tools" / "systemd-sandbox" / "sdbox"
# Outside /tmp: the unit has PrivateTmp=, and console scripts carry their venv's absolute path.
WORK = Path(os.environ.get("RECOMAMP_SYSTEMD_CHECK_DIR", "/srv/recomamp-systemd-check"))
CHECKOUT = WORK / "checkout"
VENV = WORK / "venv"
STATE = Path(os.environ.get("RECOMAMP_SDBOX_STATE", str(WORK / "sdbox-state")))
SERVICE_PYTHON = os.environ.get("PYTHON_FOR_SERVICE", "/usr/bin/python3")
PG_BIN = "/usr/lib/postgresql/15/bin"
SIM = "http://127.0.0.1:8900"
CONFIG = "/etc/recomamp/recomamp.toml"
ADMIN = f"CREDENTIALS_DIRECTORY=/etc/recomamp/credentials {VENV}/bin/recomamp"

CONFIG_TEXT = f"""\
[amazon]
client_id = "amzn1.application-oa2-client.sandbox"
token_url = "{SIM}/auth/o2/token"

[amazon.amc_base_url]
na = "{SIM}"
eu = "{SIM}"
fe = "{SIM}"

[daemon]
poll_interval_seconds = 1.0
lease_seconds = 30.0
drain_timeout_seconds = 15.0
run_retry_delay_seconds = 2.0

[database]
outage_max_wait_seconds = 5.0

[amc]
listing_lag_seconds = 0.1

[retry]
lwa_server_error_waits = [0.5, 0.5, 0.5]
lwa_network_waits = [0.5, 0.5, 0.5]
amc_waits = [0.5, 1.0, 1.0, 1.0, 1.0]
amc_poll_initial_seconds = 0.5
amc_poll_max_seconds = 1.0

[metrics]
listen = ""
"""


class CheckFailed(AssertionError):
    pass


def step(text: str) -> None:
    print(f"--- {text}", flush=True)


def ok(text: str) -> None:
    print(f"    ok: {text}", flush=True)


def require(condition: bool, what: str, detail: str = "") -> None:
    if not condition:
        raise CheckFailed(what + (f"\n{detail}" if detail else ""))
    ok(what)


def host(*command: str, cwd: Path | None = None) -> None:
    subprocess.run(command, cwd=cwd, check=True)


def box(command: str, *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(SDBOX), "sh", command, str(STATE)], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise CheckFailed(f"`{command}` exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def out(command: str, *, check: bool = True, timeout: float = 120) -> str:
    return box(command, check=check, timeout=timeout).stdout


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            ok(what)
            return
        time.sleep(0.5)
    raise CheckFailed(f"timed out after {seconds:.0f} s waiting for {what}")


def unit(*properties: str, name: str = "recomamp") -> dict[str, str]:
    text = out(f"systemctl show {name} -p {','.join(properties)}")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def journal(since: str = "", priority: str = "", name: str = "recomamp") -> list[dict[str, object]]:
    """The unit's JSON lines logged after `since` (an ISO timestamp; systemd's own lines are skipped, as the
    README's `jq -R 'fromjson?'` does). Not journal cursors: the service's lines and systemd's own land in
    different journal files (PrivateUsers=), so "the last cursor" of the unit is not the last line."""
    lines = out(f"journalctl -u {name} -o cat --no-pager{f' -p {priority}' if priority else ''}").splitlines()
    events = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and str(value.get("timestamp", "")) > since:
            events.append(value)
    return events


def logged(mark: str, event: str, priority: str = "", name: str = "recomamp") -> list[dict[str, object]]:
    """The lines of one event since the cursor, waiting a little: journald ingests stdout asynchronously."""
    found: list[dict[str, object]] = []

    def seen() -> bool:
        found[:] = [e for e in journal(mark, priority, name) if e["event"] == event]
        return bool(found)

    wait_for(seen, f"{event} in the journal of {name}" + (f" at {priority}" if priority else ""), 10)
    return found


def cursor() -> str:
    """Now, in the daemon's timestamp format (UTC, ISO 8601)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def admin(command: str) -> str:
    return out(f"{ADMIN} {command} --config {CONFIG}")


def runs() -> list[dict[str, object]]:
    value = json.loads(admin("runs list --json"))
    return list(value)


def sim(path: str, body: dict[str, object]) -> dict[str, object]:
    text = out(f"curl -sf -XPOST {SIM}{path} -H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}")
    return dict(json.loads(text))


# --- set-up on the host --------------------------------------------------------------------------------------


def prepare_checkout() -> None:
    step(f"copying this checkout to {CHECKOUT} and building the service venv {VENV} from {SERVICE_PYTHON}")
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    if CHECKOUT.exists():
        shutil.rmtree(CHECKOUT)
    CHECKOUT.mkdir(parents=True)
    for name in filter(None, files):
        source = ROOT / name.decode()
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        target = CHECKOUT / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    host(
        "make", "--no-print-directory", "service-venv", f"PYTHON={SERVICE_PYTHON}", f"SERVICE_VENV={VENV}", cwd=CHECKOUT
    )


# --- the checks ----------------------------------------------------------------------------------------------


def install() -> None:
    step("inside the sandbox: Postgres 15, the simulator, then the service as the README installs it")
    box(
        f"install -d -o postgres -m 0700 /var/lib/pgcheck && runuser -u postgres -- {PG_BIN}/initdb "
        "-D /var/lib/pgcheck/data -A trust -U postgres >/dev/null"
    )
    start_postgres()
    box(f"{PG_BIN}/psql -h 127.0.0.1 -U postgres -qc 'CREATE DATABASE recomamp'")
    box(f"systemd-run --unit=amc-sim {VENV}/bin/recomamp sandbox --port 8900 --pending 0.3 --running 1")
    wait_for(lambda: box(f"curl -sf {SIM}/_sandbox/calls", check=False).returncode == 0, "the simulator answers")
    box(f"cd /opt/recomamp && make --no-print-directory install-systemd PYTHON={SERVICE_PYTHON} SERVICE_VENV={VENV}")
    box(
        "cd /etc/recomamp/credentials && "
        f"sh -c '{VENV}/bin/recomamp keygen > token-key' && "
        "printf %s sandbox-client-secret > amazon-client-secret && "
        "printf %s postgresql://postgres@127.0.0.1:5432/recomamp > database-dsn && "
        "chmod 0600 token-key amazon-client-secret database-dsn"
    )
    write_config(CONFIG_TEXT)
    box(f"{ADMIN} check-config {CONFIG}")
    box(f"{ADMIN} migrate up --config {CONFIG}")
    for email, instance in (("ada@example.com", "amcada"), ("bob@example.com", "amcbob")):
        token = sim("/_sandbox/users", {"email": email, "instances": [instance]})["refresh_token"]
        admin(f"users add {email}")
        box(f"printf %s {shlex.quote(str(token))} | {ADMIN} users set-token {email} --config {CONFIG}")
        admin(
            f"instances add {email} --instance-id {instance} --advertiser-id ENTITY{instance.upper()} "
            "--marketplace-id ATVPDKIKX0DER --region na"
        )
        admin(
            f"schedules create --user {email} --instance {instance} --name {shlex.quote(email + ' daily')} "
            "--sql-file /opt/recomamp/tests/systemd/query.sql --preset daily --time 06:00 --timezone UTC --no-snowflake"
        )
    sim("/_sandbox/revoke", {"email": "bob@example.com"})  # bob's refresh token no longer works


def write_config(text: str, path: str = CONFIG) -> None:
    box(f"printf %s {shlex.quote(text)} > {path} && chgrp recomamp {path} && chmod 0640 {path}")


def start_postgres() -> None:
    box(
        f"systemd-run --unit=pg -p User=postgres {PG_BIN}/postgres -D /var/lib/pgcheck/data "
        "-h 127.0.0.1 -p 5432 -k /var/lib/pgcheck"
    )
    wait_for(
        lambda: box(f"{PG_BIN}/pg_isready -q -h 127.0.0.1", check=False).returncode == 0, "Postgres accepts connections"
    )


def schedule_ids() -> dict[str, int]:
    rows = json.loads(admin("schedules list --json"))
    return {str(row["user_email"]): int(row["id"]) for row in rows}


def finished(run_ids: set[int]) -> Callable[[], bool]:
    def check() -> bool:
        rows = {int(str(r["id"])): r for r in runs()}
        return all(rows.get(i, {}).get("status") in ("succeeded", "failed") for i in run_ids)

    return check


def start_and_run() -> tuple[int, int]:
    step("systemctl start recomamp; a healthy run and a revoked-token run")
    started = time.monotonic()
    box("systemctl start recomamp")
    state = unit("ActiveState", "SubState", "StatusText", "MainPID")
    require(
        (state["ActiveState"], state["SubState"]) == ("active", "running"),
        f"active (running) {time.monotonic() - started:.1f} s after `systemctl start`",
        str(state),
    )
    require(state["StatusText"].startswith("replica "), f"a STATUS text: {state['StatusText']!r}")
    ids = schedule_ids()
    for email in ("ada@example.com", "bob@example.com"):
        admin(f"schedules run-now {ids[email]}")
    by_email = {str(r["user_email"]): int(str(r["id"])) for r in runs()}
    wait_for(finished(set(by_email.values())), "both runs finish", 60)
    rows = {str(r["user_email"]): r for r in runs()}
    require(rows["ada@example.com"]["status"] == "succeeded", "ada's run succeeded", str(rows["ada@example.com"]))
    bob = rows["bob@example.com"]
    require(
        bob["status"] == "failed" and "re-authenticate" in str(bob["error_message"]),
        "bob's run failed with the re-authentication message",
        str(bob),
    )
    return by_email["ada@example.com"], by_email["bob@example.com"]


def check_error_journal() -> None:
    step("journalctl -p err: error lines only, one per failure")
    lines = out("journalctl -u recomamp -p err -o cat --no-pager").splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    require(len(events) == len(lines), "every line at err is one of the daemon's JSON lines", "\n".join(lines))
    require(all(e["level"] in ("error", "critical") for e in events), "and each is at level error or critical")
    failures = [e for e in events if e.get("run_id") is not None and e["event"] == "run_finished"]
    require(len(failures) == 1, "bob's failure is one line, not two", json.dumps(events, indent=1))


def readme_recipes(run_id: int) -> None:
    step("every journalctl recipe in the README")
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Reading the logs", 1)[1].split("\n## ", 1)[0]
    recipes = [
        line.split("  #", 1)[0].strip()
        for line in section.splitlines()
        if line.startswith(("journalctl ", "sudo journalctl "))
    ]
    require(len(recipes) >= 5, f"{len(recipes)} recipes found")
    for recipe in recipes:
        command = recipe.replace("run_id == 42", f"run_id == {run_id}")
        if " -f" in command:
            result = box(f"timeout 2 {command}", check=False)
            require(result.returncode == 124 and result.stdout.strip() != "", f"{recipe!r} follows the journal")
            continue
        result = box(command, check=False)
        require(
            result.returncode == 0 and result.stdout.strip() != "",
            f"{recipe!r} exits 0 with {len(result.stdout.splitlines())} lines",
            result.stderr,
        )


def reloads() -> None:
    step("systemctl reload: a changed key, then a broken config")
    pid = unit("MainPID")["MainPID"]
    mark = cursor()
    write_config(CONFIG_TEXT.replace("poll_interval_seconds = 1.0", "poll_interval_seconds = 2.0"))
    result = box("systemctl reload recomamp", check=False)
    require(result.returncode == 0, "a good config: `systemctl reload` exits 0", result.stderr)
    reloaded = logged(mark, "config_reloaded")
    require(
        reloaded[-1]["changed_keys"] == ["daemon.poll_interval_seconds"],
        "the changed key is logged",
        str(reloaded),
    )
    mark = cursor()
    write_config(CONFIG_TEXT.replace("[daemon]", "[daemon]\nmax_concurrent_runs = -4"))
    result = box("systemctl reload recomamp", check=False)
    require(result.returncode != 0, f"a broken config: `systemctl reload` exits {result.returncode}")
    refused = logged(mark, "config_reload_failed", priority="err")
    require("max_concurrent_runs" in json.dumps(refused[-1]), "its problems are in the journal at err")
    state = unit("MainPID", "ActiveState")
    require(state == {"MainPID": pid, "ActiveState": "active"}, f"the same main PID {pid}, still active", str(state))
    write_config(CONFIG_TEXT.replace("poll_interval_seconds = 1.0", "poll_interval_seconds = 2.0"))
    box("systemctl reload recomamp")


def restart_and_drain() -> int:
    step("systemctl restart; systemctl stop with a run in flight")
    pid = unit("MainPID")["MainPID"]
    box("systemctl restart recomamp")
    state = unit("MainPID", "ActiveState", "SubState")
    require(
        state["ActiveState"] == "active" and state["MainPID"] != pid, f"restarted: main PID {pid} → {state['MainPID']}"
    )
    sim("/_sandbox/instances/amcada", {"running_seconds": 30})
    admin(f"schedules run-now {schedule_ids()['ada@example.com']} --window-start 2026-10-01")
    in_flight = max(int(str(r["id"])) for r in runs())

    def polling() -> bool:
        shown = json.loads(admin(f"runs show {in_flight} --json"))
        return bool(shown.get("amc_execution_id")) and shown.get("status") == "running"

    wait_for(polling, f"run {in_flight} is submitted to AMC and running", 30)
    mark = cursor()
    box("systemctl stop recomamp", timeout=120)
    state = unit("Result", "ActiveState")
    require(state == {"Result": "success", "ActiveState": "inactive"}, "stopped with Result=success", str(state))
    summaries = logged(mark, "shutdown_complete")
    require(len(summaries) == 1, f"one summary line: {summaries[0]['summary'] if summaries else None!r}")
    require(summaries[0]["released"] == 1, "the run in flight was released for the next start")
    return in_flight


def database_outage(in_flight: int) -> None:
    step("Postgres down for longer than WatchdogSec= (10 s here): no watchdog kill, the run finishes after")
    box(
        "mkdir -p /etc/systemd/system/recomamp.service.d && "
        "printf '[Service]\\nWatchdogSec=10s\\n' > /etc/systemd/system/recomamp.service.d/watchdog.conf && "
        "systemctl daemon-reload"
    )
    sim("/_sandbox/instances/amcada", {"running_seconds": 20})
    box("systemctl start recomamp")
    time.sleep(2)
    mark = cursor()
    box("systemctl stop pg")
    time.sleep(25)
    start_postgres()
    wait_for(finished({in_flight}), f"run {in_flight} finishes after Postgres returns", 90)
    shown = json.loads(admin(f"runs show {in_flight} --json"))
    require(shown["status"] == "succeeded", f"run {in_flight} succeeded", str(shown))
    state = unit("NRestarts", "ActiveState", "SubState")
    require(state == {"NRestarts": "0", "ActiveState": "active", "SubState": "running"}, "NRestarts=0, still running")
    logged(mark, "database_unreachable")
    logged(mark, "database_reachable_again")
    watchdog = out("journalctl -u recomamp --no-pager -o cat | grep -ci 'watchdog timeout' || true").strip()
    require(watchdog == "0", "no watchdog timeout in the journal")


def security() -> None:
    step("systemd-analyze security recomamp")
    text = out("systemd-analyze security recomamp --no-pager")
    match = re.search(r"Overall exposure level for recomamp\.service: ([0-9.]+)", text)
    require(match is not None and float(match.group(1)) <= 1.5, f"exposure {match.group(1) if match else '?'} ≤ 1.5")


INSTANCES = {"a": 9464, "b": 9465}  # each instance's own [metrics] listen port


def instance_config(name: str, **daemon: int) -> str:
    """/etc/recomamp/NAME.toml: the shared settings, this instance's replica name and metrics port."""
    extra = "".join(f"{key} = {value}\n" for key, value in daemon.items())
    return CONFIG_TEXT.replace("[daemon]\n", f'[daemon]\nreplica_name = "replica-{name}"\n{extra}').replace(
        '[metrics]\nlisten = ""', f'[metrics]\nlisten = "127.0.0.1:{INSTANCES[name]}"'
    )


def sql(query: str) -> str:
    return out(f"{PG_BIN}/psql -h 127.0.0.1 -U postgres -d recomamp -Atc {shlex.quote(query)}").strip()


def held_and_running(run_id: int) -> Callable[[], bool]:
    def check() -> bool:
        status, submitted, owner = sql(
            "SELECT status, amc_execution_id IS NOT NULL, coalesce(lease_owner, '') "
            f"FROM schedule_runs WHERE id = {run_id}"
        ).split("|")
        return status == "running" and submitted == "t" and owner != ""

    return check


def taken_port(port: int) -> None:
    """A third instance whose config names a port another one holds: `systemctl start` fails, once."""
    config = instance_config("a").replace('replica_name = "replica-a"', 'replica_name = "replica-c"')
    write_config(config.replace(f"127.0.0.1:{INSTANCES['a']}", f"127.0.0.1:{port}"), "/etc/recomamp/c.toml")
    mark = cursor()
    result = box("systemctl start recomamp@c", check=False)
    require(result.returncode != 0, f"`systemctl start recomamp@c` on a taken port {port} fails: {result.returncode}")
    time.sleep(6)  # longer than RestartSec=5s: a restart, were there one, would have happened
    state = unit("ActiveState", "Result", "ExecMainStatus", "NRestarts", name="recomamp@c")
    require(
        state == {"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "78", "NRestarts": "0"},
        "it failed with 78, before READY, and was not restarted",
        str(state),
    )
    lines = [e for e in journal(mark, name="recomamp@c") if "[metrics] listen" in json.dumps(e)]
    require(
        len(lines) == 1 and lines[0]["event"] == "daemon_cannot_start",
        f"one line says why: {lines[0].get('reason') if lines else None!r}",
        str(lines),
    )
    box("systemctl reset-failed recomamp@c")


def two_instances() -> None:
    step("recomamp@a and recomamp@b on one host: own configs, ports and sockets; both claim; a reload of one")
    box("systemctl stop recomamp")
    for name in INSTANCES:
        write_config(instance_config(name), f"/etc/recomamp/{name}.toml")
    box("systemctl start recomamp@a recomamp@b")
    pids = {}
    for name, port in INSTANCES.items():
        service = f"recomamp@{name}"
        state = unit("ActiveState", "SubState", "MainPID", name=service)
        require((state["ActiveState"], state["SubState"]) == ("active", "running"), f"{service} active (running)")
        pids[name] = state["MainPID"]
        ready = box(f"curl -sf http://127.0.0.1:{port}/readyz", check=False)
        require(ready.returncode == 0, f"{service} answers /readyz on its own port {port}", ready.stdout)
        box(f"test -S /run/recomamp-{name}/control.sock")
        ok(f"{service} has its own control socket /run/recomamp-{name}/control.sock")
    require(pids["a"] != pids["b"], f"two processes: {pids}")
    # Both claim: the first run goes to whichever instance is quicker; that one is then reloaded down to one run
    # at a time, so the second run can only be claimed by the other, while the first is still in flight there.
    sim("/_sandbox/instances/amcada", {"running_seconds": 25})
    ada = schedule_ids()["ada@example.com"]
    admin(f"schedules run-now {ada} --window-start 2026-09-01")
    first = max(int(str(r["id"])) for r in runs())
    wait_for(held_and_running(first), f"run {first} submitted and running on one instance", 30)
    owner = sql(f"SELECT lease_owner FROM schedule_runs WHERE id = {first}").removeprefix("replica-")
    other = "b" if owner == "a" else "a"
    mark = cursor()
    write_config(instance_config(owner, max_concurrent_runs=1), f"/etc/recomamp/{owner}.toml")
    result = box(f"systemctl reload recomamp@{owner}", check=False)
    require(result.returncode == 0, f"`systemctl reload recomamp@{owner}` exits 0", result.stderr)
    reloaded = logged(mark, "config_reloaded", name=f"recomamp@{owner}")
    changed = reloaded[-1]["changed_keys"]
    require(isinstance(changed, list) and "daemon.max_concurrent_runs" in changed, f"recomamp@{owner} logged {changed}")
    admin(f"schedules run-now {ada} --window-start 2026-09-02")
    second = max(int(str(r["id"])) for r in runs())
    wait_for(held_and_running(second), f"run {second} submitted and running", 30)
    holders = sql(f"SELECT string_agg(lease_owner, ',' ORDER BY id) FROM schedule_runs WHERE id IN ({first}, {second})")
    require(
        holders == f"replica-{owner},replica-{other}",
        f"both claim: run {first} on recomamp@{owner}, run {second} on recomamp@{other}, at once",
        holders,
    )
    left_alone = unit("MainPID", "ActiveState", "NRestarts", name=f"recomamp@{other}")
    require(
        left_alone == {"MainPID": pids[other], "ActiveState": "active", "NRestarts": "0"},
        f"recomamp@{other} left alone by the reload: the same main PID {pids[other]}, no restart",
        str(left_alone),
    )
    require(
        not [e for e in journal(mark, name=f"recomamp@{other}") if str(e["event"]).startswith("config_reload")],
        f"and no reload in recomamp@{other}'s journal",
    )
    taken_port(INSTANCES[owner])
    wait_for(finished({first, second}), "both runs finish", 90)
    rows = {int(str(r["id"])): r["status"] for r in runs()}
    require(rows[first] == rows[second] == "succeeded", f"runs {first} and {second} succeeded", str(rows))
    box("systemctl stop recomamp@a recomamp@b", timeout=120)
    for name in INSTANCES:
        state = unit("Result", "ActiveState", name=f"recomamp@{name}")
        require(state == {"Result": "success", "ActiveState": "inactive"}, f"recomamp@{name} stopped cleanly")
    text = out("systemd-analyze security recomamp@a --no-pager")
    match = re.search(r"Overall exposure level for recomamp@a\.service: ([0-9.]+)", text)
    require(
        match is not None and float(match.group(1)) <= 1.5, f"recomamp@a exposure {match.group(1) if match else '?'}"
    )


def main() -> int:
    if not SDBOX.exists():
        print(f"systemd-check: {SDBOX} is missing (it comes with ../shared)", file=sys.stderr)
        return 2
    started = time.monotonic()
    prepare_checkout()
    subprocess.run([str(SDBOX), "down", str(STATE)], capture_output=True, check=False)
    host(str(SDBOX), "up", str(CHECKOUT), str(STATE))
    try:
        install()
        _, _ = start_and_run()
        ada_run = min(int(str(r["id"])) for r in runs())
        check_error_journal()
        reloads()
        in_flight = restart_and_drain()
        readme_recipes(ada_run)
        database_outage(in_flight)
        security()
        two_instances()
    except CheckFailed as failure:
        print(f"systemd-check FAILED: {failure}", file=sys.stderr)
        print(out("journalctl -u recomamp --no-pager -n 60 -o cat", check=False), file=sys.stderr)
        return 1
    finally:
        if not os.environ.get("RECOMAMP_SYSTEMD_CHECK_KEEP"):  # =1 leaves the sandbox up to look into
            subprocess.run([str(SDBOX), "down", str(STATE)], capture_output=True, check=False)
    print(f"systemd-check passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
