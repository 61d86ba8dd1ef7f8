"""`manage.py revoke_management_token NAME`: the token is refused from its next request on."""

from django.core.management.base import CommandError

from core.commands import StrictCommand
from manageapi.services import TokenError, management_token_revoke


class Command(StrictCommand):
    help = "Revoke a management API token (by name)."

    def add_arguments(self, parser):
        parser.add_argument("name")

    def handle(self, *args, **options):
        try:
            token = management_token_revoke(name=options["name"])
        except TokenError as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"Revoked management token {token.name}.")
