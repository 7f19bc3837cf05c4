"""Seeding the sandbox: a user whose refresh token the simulator knows, with one AMC instance."""

from __future__ import annotations

from recomamp.crypto import SecretBox
from recomamp.sandbox.simulator import AmcSimulator
from recomamp.services.tokens import set_refresh_token
from recomamp.store import catalog
from recomamp.store.db import Queryable


async def add_sandbox_user(
    connection: Queryable,
    box: SecretBox,
    simulator: AmcSimulator,
    email: str,
    instance_id: str,
    *,
    advertiser_id: str,
    instance_name: str | None = None,
) -> int:
    """Add `email` with a refresh token issued by the simulator and an NA instance; return the user id."""
    user_id = await catalog.add_user(connection, email)
    await set_refresh_token(connection, box, user_id, simulator.add_user(email))
    await catalog.add_instance(
        connection,
        user_id,
        instance_id=instance_id,
        advertiser_id=advertiser_id,
        marketplace_id="ATVPDKIKX0DER",
        region="na",
        name=instance_name,
    )
    return user_id
