"""`recomamp users …`: users, their Amazon tokens, and re-authorization."""

from __future__ import annotations

import argparse
import sys

from recomamp.cli.common import (
    EXIT_OK,
    add_command,
    async_handler,
    database,
    load,
    print_json,
    read_secret,
    table,
)
from recomamp.domain.runs import REGIONS


@async_handler
async def cmd_users(args: argparse.Namespace) -> int:
    from recomamp.crypto import SecretBox
    from recomamp.store import catalog
    from recomamp.store import users as user_store
    from recomamp.tokens import set_refresh_token

    async with database(args) as (config, connection):
        if args.users_command == "add":
            user_id = await catalog.add_user(connection, args.email)
            print(
                f"user {args.email} added (id {user_id}); authorize them with `recomamp users authorize {args.email}`"
            )
        elif args.users_command == "set-token":
            user_id = await catalog.user_id_for(connection, args.email)
            token = read_secret(args.token_file, "refresh token", "--token-file")
            await set_refresh_token(connection, SecretBox(config.security.token_keys), user_id, token)
            print(f"refresh token stored for {args.email}; the re-authentication mark, if any, is cleared")
        else:
            rows = await user_store.list_users(connection)
            for row in rows:
                row["fix"] = f"recomamp users authorize {row['email']} --rerun-failed" if row["needs_reauth"] else None
            if args.json:
                print_json(rows)
            else:
                table(rows, ["id", "email", "needs_reauth", "has_refresh_token", "instances", "schedules", "fix"])
    return EXIT_OK


@async_handler
async def cmd_authorize(args: argparse.Namespace) -> int:
    """Consent URL → the browser's redirect (loopback listener) or a pasted URL → stored, proven, rerun."""
    from recomamp.services.authorize import (
        code_from_paste,
        complete,
        consent_request,
        wait_for_browser,
    )
    from recomamp.store import catalog
    from recomamp.store import users as user_store

    config = load(args)
    async with database(args) as (_, connection):
        user_id = await catalog.user_id_for(connection, args.email)  # an unknown email: one line, exit 2
        region = args.region or await user_store.region_of(connection, user_id) or "na"
    request = consent_request(config, region)
    print(f"Open this link, sign in as {args.email}'s Amazon Ads login and approve:\n\n  {request.url}\n")
    if args.paste:
        print("Then paste the whole URL the browser was sent to (or only its code), and press Enter:", flush=True)
        code = code_from_paste(sys.stdin.readline(), request)
    else:
        print(f"Waiting for the browser on {request.redirect_uri} (Ctrl-C to stop)…", flush=True)
        code = await wait_for_browser(request)
    result = await complete(config, args.email, code, request, region=region, rerun_failed=args.rerun_failed)
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
    users = commands.add_parser("users", parents=[common], help="users and their Amazon tokens")
    actions = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    add_command(actions, "add", "add a user", cmd_users, common).add_argument("email")
    set_token = add_command(
        actions, "set-token", "store a user's LWA refresh token (read from stdin or --token-file)", cmd_users, common
    )
    set_token.add_argument("email")
    set_token.add_argument("--token-file", metavar="PATH", help="a file holding the refresh token (default: stdin)")
    add_command(actions, "list", "list users, with who needs to re-authenticate", cmd_users, common)
    authorize = add_command(
        actions,
        "authorize",
        "sign a user in with Amazon (consent link, then the browser's redirect or --paste) and store their token",
        cmd_authorize,
        common,
    )
    authorize.add_argument("email")
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
