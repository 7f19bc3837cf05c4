"""`recomamp users …`: users, their Amazon tokens, and re-authorization."""

from __future__ import annotations

import argparse

from recomamp.cli.common import EXIT_OK, add_command, async_handler, database, print_json, read_secret, table


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
