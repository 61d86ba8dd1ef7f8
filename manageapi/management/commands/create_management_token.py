"""`manage.py create_management_token NAME [--team TEAM]`: prints the token (shown once) as the last line of stdout."""

from django.core.management.base import CommandError

from apikeys.services import TeamLookupError, team_find
from core.commands import StrictCommand
from manageapi.services import TokenError, management_token_create


class Command(StrictCommand):
    help = "Create a management API token; with --team it sees and changes only that team's keys."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--team", help="scope the token to this team (its name)")

    def handle(self, *args, **options):
        try:
            team = team_find(options["team"]) if options["team"] is not None else None
            token, raw = management_token_create(name=options["name"], team=team)
        except (TeamLookupError, TokenError) as exc:
            raise CommandError(str(exc)) from None
        scope = f"team {team.name}" if team is not None else "every team"
        self.stderr.write(f"Created management token {token.name} ({scope}). Store it now: it is not shown again.")
        self.stdout.write(raw)
