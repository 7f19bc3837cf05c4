"""The AMC client: one transport, and the operations built on it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp

from recomamp.amazon.accounts import Accounts
from recomamp.amazon.executions import Executions
from recomamp.amazon.results import Results
from recomamp.amazon.transport import AmcRetryPolicy, AmcTransport


class AmcClient:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        client_id: str,
        policy: AmcRetryPolicy,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.transport = AmcTransport(http, client_id=client_id, policy=policy, sleep=sleep)
        self.executions = Executions(self.transport)
        self.results = Results(self.transport, self.executions)
        self.accounts = Accounts(self.transport)

    @property
    def policy(self) -> AmcRetryPolicy:
        return self.transport.policy

    def reconfigure(self, policy: AmcRetryPolicy) -> None:
        self.transport.reconfigure(policy)
