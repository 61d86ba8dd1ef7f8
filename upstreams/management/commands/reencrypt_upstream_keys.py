"""`manage.py reencrypt_upstream_keys`: re-seal every stored upstream key with the first encryption key."""

from django.core.management.base import CommandError

from upstreams.crypto import KeyEncryptionError
from upstreams.services import upstream_keys_reencrypt

from ._common import UpstreamCommand


class Command(UpstreamCommand):
    help = (
        "Re-encrypt every stored upstream API key with the first key of UPSTREAM_KEY_ENCRYPTION_KEYS "
        "(after putting a new key first); then the old keys can be removed."
    )

    def handle(self, *args, **options):
        try:
            count = upstream_keys_reencrypt(actor="command:reencrypt_upstream_keys")
        except KeyEncryptionError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{count} upstream key(s) re-encrypted")
