"""`recomamp instances …`: AMC instances, added by hand or discovered with the user's token."""

from __future__ import annotations

import argparse

from recomamp.cli.common import EXIT_OK, add_command, add_noun, async_handler, database, load
from recomamp.cli.output import Column, print_json, table
from recomamp.domain.runs import REGIONS


@async_handler
async def cmd_instances(args: argparse.Namespace) -> int:
    from recomamp.services import instances

    async with database(args) as (_, connection):
        if args.instances_command == "add":
            await instances.add(
                connection,
                args.email,
                instance_id=args.instance_id,
                advertiser_id=args.advertiser_id,
                marketplace_id=args.marketplace_id,
                region=args.region,
                name=args.name,
            )
            if args.json:
                print_json({"instance_id": args.instance_id, "user_email": args.email, "region": args.region})
            else:
                print(f"instance {args.instance_id} added for {args.email}")
        else:
            rows = await instances.list_all(connection)
            if args.json:
                print_json(rows)
            else:
                table(
                    rows,
                    [
                        Column("id", minimum=2),
                        Column("user_email", "USER", flexible=True, minimum=12),
                        Column("instance_id", "INSTANCE", flexible=True, minimum=10),
                        Column("advertiser_id", "ADVERTISER", flexible=True, minimum=10),
                        Column("marketplace_id", "MARKETPLACE", minimum=11),
                        Column("region", minimum=6),
                        Column("name", flexible=True, minimum=8),
                        Column("api_endpoint", "API ENDPOINT", flexible=True, minimum=16),
                    ],
                    wide=args.wide,
                )
    return EXIT_OK


@async_handler
async def cmd_discover(args: argparse.Namespace) -> int:
    from recomamp.services.instances import cli_replica, discover
    from recomamp.wiring import open_services

    config = load(args)
    async with open_services(config, replica=cli_replica()) as services:
        found, added = await discover(services, config, args.email, region=args.region, add=args.add)
    if args.json:
        print_json({"instances": [i.as_dict() for i in found], "added": added})
        return EXIT_OK
    if not found:
        print(f"{args.email} can see no AMC instance (no AMC account, or none with an instance)")
        return EXIT_OK
    table(
        [i.as_dict() for i in found],
        [
            Column("account_id", "ACCOUNT", flexible=True, minimum=10),
            Column("account_name", "ACCOUNT NAME", flexible=True, minimum=12),
            Column("marketplace_id", "MARKETPLACE", minimum=11),
            Column("instance_id", "INSTANCE", flexible=True, minimum=10),
            Column("instance_name", "INSTANCE NAME", flexible=True, minimum=13),
            Column("api_endpoint", "API ENDPOINT", flexible=True, minimum=16),
        ],
        wide=args.wide,
    )
    if args.add:
        print(f"stored {len(found)} instance(s) for {args.email} ({added} new); runs use each one's apiEndpoint")
    else:
        print(f"add them with `recomamp instances discover {args.email} --add`")
    return EXIT_OK


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    actions = add_noun(commands, "instances", "AMC instances", common, "instances_command")
    add = add_command(actions, "add", "add an AMC instance for a user", cmd_instances, common)
    add.add_argument("email", help="the recomamp user it belongs to")
    add.add_argument("--instance-id", required=True, help="the AMC instance id, e.g. amcabc123")
    add.add_argument("--advertiser-id", required=True, help="the AMC account (entity) id")
    add.add_argument("--marketplace-id", required=True, help="e.g. ATVPDKIKX0DER")
    add.add_argument("--region", default="na", choices=REGIONS, help="the AMC region (default na)")
    add.add_argument("--name", help="a name for people (default: none)")
    add_command(actions, "list", "list AMC instances", cmd_instances, common)
    discover = add_command(
        actions,
        "discover",
        "list the AMC accounts and instances a user can see (GET /amc/accounts, /amc/instances)",
        cmd_discover,
        common,
    )
    discover.add_argument("email", help="the recomamp user whose token is used")
    discover.add_argument("--region", default="na", choices=REGIONS, help="where to ask ([amazon.amc_base_url])")
    discover.add_argument("--add", action="store_true", help="store them, with each instance's apiEndpoint")
