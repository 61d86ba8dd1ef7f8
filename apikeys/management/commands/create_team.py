"""`manage.py create_team NAME [--budget-usd X] [--budget-period day|month|total] [--rpm N] [--tpm N]
[--max-concurrent N] [--models a,b] [--alert-thresholds 50,80,100]`

Prints the new team as one JSON object on stdout (the fields of `list_teams --json`); messages go to stderr.
"""

import json
from dataclasses import asdict

from django.core.management.base import CommandError

from apikeys.selectors import team_row
from apikeys.services import team_create
from core.commands import non_negative_int

from ._common import KeyCommand, NoRepeatAction, percent_list
from .create_api_key import budget


class Command(KeyCommand):
    help = "Create a team: limits and a budget shared by all its keys, and an allowlist that narrows theirs."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--budget-usd", type=budget, action=NoRepeatAction, help="spend cap in USD")
        parser.add_argument(
            "--budget-period", choices=["day", "month", "total"], default="month", action=NoRepeatAction
        )
        parser.add_argument("--rpm", type=non_negative_int, action=NoRepeatAction, help="requests per minute")
        parser.add_argument("--tpm", type=non_negative_int, action=NoRepeatAction, help="tokens per minute")
        parser.add_argument(
            "--max-concurrent", type=non_negative_int, action=NoRepeatAction, help="concurrent requests"
        )
        parser.add_argument("--models", action=NoRepeatAction, help="comma-separated allowed models (default all)")
        parser.add_argument(
            "--alert-thresholds",
            type=percent_list,
            action=NoRepeatAction,
            help="comma-separated percentages of the budget that send an alert (default 50,80,100)",
        )
        parser.add_argument("--notes", default="", action=NoRepeatAction)

    def handle(self, *args, **options):
        models = [m for m in (options["models"] or "").split(",") if m.strip()]
        try:
            team = team_create(
                name=options["name"],
                actor="command:create_team",
                notes=options["notes"],
                rpm=options["rpm"],
                tpm=options["tpm"],
                max_concurrent=options["max_concurrent"],
                allowed_models=models,
                budget_usd=options["budget_usd"],
                budget_period=options["budget_period"],
                alert_thresholds=options["alert_thresholds"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"Created team {team.name}.")
        self.stdout.write(json.dumps(asdict(team_row(team))))
