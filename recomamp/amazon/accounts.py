"""AMC account and instance discovery: `GET /amc/accounts`, then `GET /amc/instances` per account."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recomamp.amazon.transport import AmcTarget, AmcTransport, TokenSource


@dataclass(frozen=True)
class AmcAccount:
    account_id: str
    account_name: str | None
    marketplace_id: str


@dataclass(frozen=True)
class AmcInstance:
    account: AmcAccount
    instance_id: str
    instance_name: str | None
    instance_type: str | None
    creation_status: str | None
    api_endpoint: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account.account_id,
            "account_name": self.account.account_name,
            "marketplace_id": self.account.marketplace_id,
            "instance_id": self.instance_id,
            "instance_name": self.instance_name,
            "instance_type": self.instance_type,
            "creation_status": self.creation_status,
            "api_endpoint": self.api_endpoint,
        }


class Accounts:
    def __init__(self, transport: AmcTransport) -> None:
        self._transport = transport

    async def _pages(
        self, url: str, target: AmcTarget | None, tokens: TokenSource, path: str, key: str
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        next_token: str | None = None
        while True:
            params = {"nextToken": next_token} if next_token else None
            body = await self._transport.call(url, target, tokens, "GET", path, params=params) or {}
            items.extend(item for item in body.get(key, []) if isinstance(item, dict))
            next_token = body.get("nextToken")
            if not next_token:
                return items

    async def accounts(self, base_url: str, tokens: TokenSource) -> list[AmcAccount]:
        rows = await self._pages(f"{base_url}/amc/accounts", None, tokens, "/amc/accounts", "amcAccounts")
        return [
            AmcAccount(str(row.get("accountId")), row.get("accountName"), str(row.get("marketplaceId") or ""))
            for row in rows
            if row.get("accountId")
        ]

    async def instances(self, base_url: str, tokens: TokenSource, account: AmcAccount) -> list[AmcInstance]:
        # The account goes in the AdvertiserId header, as on every reporting call.
        target = AmcTarget(base_url, "", account.account_id, account.marketplace_id)
        rows = await self._pages(f"{base_url}/amc/instances", target, tokens, "/amc/instances", "instances")
        return [
            AmcInstance(
                account=account,
                instance_id=str(row.get("instanceId")),
                instance_name=row.get("instanceName"),
                instance_type=row.get("instanceType"),
                creation_status=row.get("creationStatus"),
                api_endpoint=str(row["apiEndpoint"]).rstrip("/") if row.get("apiEndpoint") else None,
            )
            for row in rows
            if row.get("instanceId")
        ]

    async def discover(self, base_url: str, tokens: TokenSource) -> list[AmcInstance]:
        found: list[AmcInstance] = []
        for account in await self.accounts(base_url, tokens):
            found.extend(await self.instances(base_url, tokens, account))
        return found
