"""`recomamp users …`: users, their Amazon tokens, and re-authorization."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from recomamp.cli.common import (
    EXIT_OK,
    add_command,
    add_noun,
    async_handler,
    database,
    load,
    read_secret,
)
from recomamp.cli.output import Column, print_json, table, when
from recomamp.domain.runs import REGIONS


def token_state(row: dict[str, Any]) -> tuple[str, str | None]:
    """(what the user's Amazon token is, the command that fixes it). No token at all is not "fine"."""
    email = row["email"]
    if not row["has_refresh_token"]:
        return "none", f"recomamp users authorize {email}"
    if row["needs_reauth"]:
        since = f" since {when(row['needs_reauth_at'])}" if row.get("needs_reauth_at") else ""
        return f"needs re-auth{since}", f"recomamp users authorize {email} --rerun-failed"
    return "ok", None


@async_handler
async def cmd_users(args: argparse.Namespace) -> int:
    from recomamp.services import users

    async with database(args) as (config, connection):
        if args.users_command == "add":
            user_id = await users.add(connection, args.email)
            if args.json:
                print_json({"id": user_id, "email": args.email})
            else:
                print(
                    f"user {args.email} added (id {user_id}); authorize them with "
                    f"`recomamp users authorize {args.email}`"
                )
        elif args.users_command == "set-token":
            user_id = await users.user_id(connection, args.email)
            token = read_secret(args.token_file, "refresh token", "--token-file")
            await users.store_refresh_token(connection, config, user_id, token)
            if args.json:
                print_json({"id": user_id, "email": args.email, "token": "ok"})
            else:
                print(f"refresh token stored for {args.email}; the re-authentication mark, if any, is cleared")
        else:
            rows = await users.list_all(connection)
            for row in rows:
                row["token"], row["fix"] = token_state(row)
            if args.json:
                print_json(rows)
            else:
                table(
                    rows,
                    [
                        Column("id", minimum=2),
                        Column("email", flexible=True, minimum=16),
                        Column("token", flexible=True, minimum=12),
                        Column("instances", minimum=9),
                        Column("schedules", minimum=9),
                    ],
                    wide=args.wide,
                )
                fixes = [row["fix"] for row in rows if row["fix"]]
                if fixes:
                    print("\nto fix: " + "\n        ".join(f"`{fix}`" for fix in fixes))
    return EXIT_OK


def simulator_hint(message: str, consent_url: str, email: str) -> str:
    """On the sandbox's consent page nobody clicks "approve": the simulator denies until told who approves."""
    from urllib.parse import urlsplit

    parts = urlsplit(consent_url)
    if "access_denied" not in message or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return ""
    base = f"{parts.scheme}://{parts.netloc}"
    return (
        f" (this is the sandbox's simulator: tell it who approves with `curl -s -XPOST {base}/_sandbox/consent "
        f'-d \'{{"email": "{email}", "decision": "approve"}}\'`, then authorize again)'
    )


@async_handler
async def cmd_authorize(args: argparse.Namespace) -> int:
    """Consent URL → the browser's redirect (loopback listener) or a pasted URL → stored, proven, rerun."""
    from recomamp.services.authorize import (
        AuthorizeError,
        check_age,
        code_from_paste,
        complete,
        consent_request,
        wait_for_browser,
    )
    from recomamp.services.instances import cli_replica
    from recomamp.services.users import consent_region
    from recomamp.wiring import open_services

    config = load(args)
    async with database(args) as (_, connection):
        region = await consent_region(connection, args.email, args.region)  # an unknown email: one line, exit 2
    request = consent_request(config, region)
    # With --json, stdout is the one JSON answer; the person's instructions go to stderr.
    say = sys.stderr if args.json else sys.stdout

    def show_link(then: str) -> None:
        print(f"Open this link, sign in as {args.email}'s Amazon Ads login and approve:\n\n  {request.url}\n", file=say)
        print(then, file=say, flush=True)

    try:
        if args.paste:
            show_link("Then paste the whole URL the browser was sent to (or only its code), and press Enter:")
            code = code_from_paste(sys.stdin.readline(), request)
        else:
            waiting = f"Waiting for the browser on {request.redirect_uri} (Ctrl-C to stop)…"
            code = await wait_for_browser(request, listening=lambda: show_link(waiting))
    except AuthorizeError as exc:
        raise AuthorizeError(f"{exc}{simulator_hint(str(exc), request.url, args.email)}") from None
    check_age(request)  # before the pools are opened: a code too old is one line, nothing opened
    async with open_services(config, replica=cli_replica()) as services:
        result = await complete(
            services, config, args.email, code, request, region=region, rerun_failed=args.rerun_failed
        )
    if args.json:
        print_json(result)
        return EXIT_OK
    print(f"{args.email} is authorized" + ("; the re-authentication mark is cleared" if result["cleared_mark"] else ""))
    names = ", ".join(f"{a['name'] or a['account_id']} ({a['account_id']})" for a in result["accounts"])
    print(f"the token works: one refresh, and GET /amc/accounts sees {len(result['accounts'])} account(s): {names}")
    if args.rerun_failed:
        print(f"queued again {len(result['rerun'])} run(s) that failed for re-authentication, each for its own window")
    return EXIT_OK


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    actions = add_noun(commands, "users", "users and their Amazon tokens", common, "users_command")
    add_command(actions, "add", "add a user", cmd_users, common).add_argument(
        "email", help="the user's email: how every other command names them"
    )
    set_token = add_command(
        actions, "set-token", "store a user's LWA refresh token (read from stdin or --token-file)", cmd_users, common
    )
    set_token.add_argument("email", help="the recomamp user")
    set_token.add_argument("--token-file", metavar="PATH", help="a file holding the refresh token (default: stdin)")
    add_command(actions, "list", "list users, with who needs to re-authenticate", cmd_users, common)
    authorize = add_command(
        actions,
        "authorize",
        "sign a user in with Amazon (consent link, then the browser's redirect or --paste) and store their token",
        cmd_authorize,
        common,
    )
    authorize.add_argument("email", help="the recomamp user to sign in")
    authorize.add_argument(
        "--paste", action="store_true", help="headless: paste the redirected URL (or its code) instead of listening"
    )
    authorize.add_argument(
        "--rerun-failed",
        action="store_true",
        help="queue again the runs that failed for re-authentication since the user was marked",
    )
    authorize.add_argument(
        "--region", choices=REGIONS, help="which Amazon consent page (default: the region of the user's instances)"
    )
