"""`recomamp notify test`: send a test alert to every [[notify.webhook]] target and print each answer."""

from __future__ import annotations

import argparse
import socket
from datetime import UTC, datetime

from recomamp.cli.common import EXIT_FAILURE, EXIT_OK, UsageError, add_command, add_noun, async_handler, load
from recomamp.cli.output import print_json


@async_handler
async def cmd_notify(args: argparse.Namespace) -> int:
    import asyncio

    import aiohttp

    from recomamp.notify.webhooks import deliver

    config = load(args)
    targets = config.notify.webhook
    if not targets:
        raise UsageError("notify: no [[notify.webhook]] target in the config; add one (see `recomamp example-config`)")
    payload = {
        "event": "test",
        "text": f"recomamp: a test alert from {socket.gethostname()} at {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC. "
        "If you read this, alerts reach you.",
    }
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(deliver(session, target, payload) for target in targets))
    results = list(zip(targets, answers, strict=True))
    if args.json:
        print_json(
            [
                {"name": t.name, "format": t.format, "url": t.safe_url, "ok": a.ok, "detail": a.detail}
                for t, a in results
            ]
        )
    else:
        for target, answer in results:
            print(
                f"{target.name:<20} {target.format:<6} {target.safe_url:<40} "
                f"{'ok' if answer.ok else 'FAILED'}: {answer.detail}"
            )
    return EXIT_OK if all(answer.ok for answer in answers) else EXIT_FAILURE


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    actions = add_noun(commands, "notify", "alerts to webhooks", common, "notify_command")
    add_command(actions, "test", "send a test alert to every webhook target and print each answer", cmd_notify, common)
