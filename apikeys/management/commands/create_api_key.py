"""`manage.py create_api_key NAME [--rpm N] [--tpm N] [--max-concurrent N] [--models a,b] [--hosted-tools a,b]
[--expires ISO-8601|30d] [--budget-usd X] [--budget-period day|month|total] [--owner TEXT] [--notes TEXT]
[--team TEAM] [--alert-thresholds 50,80,100]`

Prints the raw key as the last line of stdout (and nothing else there); everything else goes to stderr.
"""

from decimal import Decimal, InvalidOperation

from django.core.management.base import CommandError

from apikeys.services import TeamLookupError, api_key_create, team_find
from core.commands import non_negative_int

from ._common import KeyCommand, NoRepeatAction, expiry, percent_list


def budget(value: str) -> Decimal:
    import argparse

    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"expected an amount in USD, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative amount, got {value!r}")
    return amount


class Command(KeyCommand):
    help = "Create an API key and print the raw key (shown once) as the last line of stdout."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--rpm", type=non_negative_int, action=NoRepeatAction, help="requests per minute")
        parser.add_argument("--tpm", type=non_negative_int, action=NoRepeatAction, help="tokens per minute")
        parser.add_argument(
            "--max-concurrent", type=non_negative_int, action=NoRepeatAction, help="concurrent requests"
        )
        parser.add_argument("--models", action=NoRepeatAction, help="comma-separated allowed models (default all)")
        parser.add_argument(
            "--hosted-tools",
            action=NoRepeatAction,
            help="comma-separated hosted tool types the key may use (web_search,file_search; default all)",
        )
        parser.add_argument(
            "--expires",
            type=expiry,
            action=NoRepeatAction,
            help="expiry: ISO-8601 date-time (UTC when no offset) or a duration from now (90d, 12h, 30m, 45s)",
        )
        parser.add_argument("--budget-usd", type=budget, action=NoRepeatAction, help="spend cap in USD")
        parser.add_argument(
            "--budget-period", choices=["day", "month", "total"], default="month", action=NoRepeatAction
        )
        parser.add_argument("--owner", default="", action=NoRepeatAction)
        parser.add_argument("--notes", default="", action=NoRepeatAction)
        parser.add_argument("--team", action=NoRepeatAction, help="the team the key belongs to (its name)")
        parser.add_argument(
            "--alert-thresholds",
            type=percent_list,
            action=NoRepeatAction,
            help="comma-separated percentages of the budget that send an alert (default 50,80,100)",
        )

    def handle(self, *args, **options):
        models = [m for m in (options["models"] or "").split(",") if m.strip()]
        tools = [t for t in (options["hosted_tools"] or "").split(",") if t.strip()]
        try:
            team = team_find(options["team"]) if options["team"] is not None else None
        except TeamLookupError as exc:
            raise CommandError(str(exc)) from None
        try:
            api_key, raw = api_key_create(
                name=options["name"],
                actor="command:create_api_key",
                owner=options["owner"],
                notes=options["notes"],
                rpm=options["rpm"],
                tpm=options["tpm"],
                max_concurrent=options["max_concurrent"],
                allowed_models=models,
                hosted_tools=tools,
                expires=options["expires"],
                budget_usd=options["budget_usd"],
                budget_period=options["budget_period"],
                team=team,
                alert_thresholds=options["alert_thresholds"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"Created key {api_key.prefix} ({api_key.name}). Store it now: it is not shown again.")
        self.stdout.write(raw)
