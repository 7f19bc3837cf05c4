"""The outage gate without a server: connection errors are waited out with doubling, capped waits (counted, never
slept), other errors pass at once, and a deadline raises the last connection error."""

from __future__ import annotations

import time

import pytest

from recomamp.store.outage import DatabaseGate, DatabaseHealth


class Script:
    """An action that fails with the given exceptions, in order, then answers 'ok'."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def gate(waits: list[float], *, max_wait: float = 1.0) -> tuple[DatabaseGate, DatabaseHealth]:
    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    health = DatabaseHealth()
    return DatabaseGate(health, max_wait=max_wait, first_wait=0.2, sleep=sleep), health


async def test_connection_errors_are_waited_out_with_doubling_capped_waits() -> None:
    waits: list[float] = []
    outage, health = gate(waits)
    action = Script(*(ConnectionRefusedError() for _ in range(5)))
    seen: list[bool] = []
    health.listeners.append(seen.append)
    assert await outage.call("claim runs", action) == "ok"
    assert action.calls == 6
    assert waits == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert health.healthy and seen == [False, True]  # one change of state each way


async def test_a_reconfigured_cap_applies_to_the_next_wait() -> None:
    waits: list[float] = []
    outage, _ = gate(waits, max_wait=0.3)
    outage.reconfigure(5.0)
    assert await outage.call("poll", Script(*(ConnectionRefusedError() for _ in range(4)))) == "ok"
    assert waits == [0.2, 0.4, 0.8, 1.6]


async def test_other_errors_pass_at_once() -> None:
    waits: list[float] = []
    outage, health = gate(waits)
    action = Script(ValueError("a bug, not an outage"))
    with pytest.raises(ValueError, match="a bug"):
        await outage.call("poll", action)
    assert action.calls == 1 and waits == [] and health.healthy


async def test_a_deadline_raises_the_last_connection_error() -> None:
    waits: list[float] = []
    outage, health = gate(waits)
    last = ConnectionResetError("the third")
    action = Script(ConnectionRefusedError(), ConnectionRefusedError(), last, ConnectionRefusedError())
    # 0.2 + 0.4 fit before the deadline; the third wait (0.8) would pass it (the sleeps are not slept).
    with pytest.raises(ConnectionResetError) as excinfo:
        await outage.call("release leases", action, deadline=time.monotonic() + 0.7)
    assert excinfo.value is last
    assert action.calls == 3 and waits == [0.2, 0.4] and not health.healthy
