"""`manage.py revoke_api_key KEY_OR_PREFIX`: revoke a key by its raw value or its prefix."""

from django.core.management.base import CommandError

from apikeys.services import KeyLookupError, KeyStateError, api_key_find, api_key_revoke

from ._common import KeyCommand


class Command(KeyCommand):
    help = "Revoke an API key (raw key or prefix). Every instance refuses it within a second."

    def add_arguments(self, parser):
        parser.add_argument("key_or_prefix")

    def handle(self, *args, **options):
        try:
            api_key = api_key_find(options["key_or_prefix"])
            api_key_revoke(api_key=api_key, actor="command:revoke_api_key")
        except (KeyLookupError, KeyStateError) as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"Revoked key {api_key.prefix} ({api_key.name}).")
