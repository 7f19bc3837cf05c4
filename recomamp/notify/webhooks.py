"""The webhook adapter: one POST per event and target, its body in the target's format, its answer classified.

The URL is a secret (a Slack webhook's path is its password): it is never logged; `target.safe_url`
(scheme, host and port) is what log lines and `recomamp notify test` show.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp

from recomamp.config import WebhookTarget


@dataclass(frozen=True)
class DeliveryAnswer:
    ok: bool
    detail: str  # "HTTP 200", "HTTP 500", "timeout after 10 s", "connection refused"…


def body_for(target: WebhookTarget, payload: dict[str, Any]) -> dict[str, Any]:
    """`json`: the whole event (with its outbox id, so a receiver can drop a repeat); `slack`: Slack's
    incoming-webhook shape, the event's one line as its text."""
    if target.format == "slack":
        return {"text": str(payload.get("text") or payload.get("event"))}
    return payload


async def deliver(session: aiohttp.ClientSession, target: WebhookTarget, payload: dict[str, Any]) -> DeliveryAnswer:
    try:
        async with session.post(
            target.url.get_secret_value(),
            json=body_for(target, payload),
            timeout=aiohttp.ClientTimeout(total=target.timeout_seconds),
            allow_redirects=False,
        ) as response:
            await response.read()
            return DeliveryAnswer(200 <= response.status < 300, f"HTTP {response.status}")
    except TimeoutError:
        return DeliveryAnswer(False, f"timeout after {target.timeout_seconds:.0f} s")
    except aiohttp.ClientError as exc:
        # The exception's text may hold the URL (and so its secret path): only its class is told.
        return DeliveryAnswer(False, f"cannot reach {target.safe_url} ({type(exc).__name__})")
    except asyncio.CancelledError:
        raise
