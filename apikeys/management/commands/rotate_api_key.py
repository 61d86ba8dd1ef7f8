"""`manage.py rotate_api_key KEY_OR_PREFIX [--grace SECONDS] [--dry-run]`
`manage.py rotate_api_key --older-than 90d [--grace SECONDS] [--dry-run]`

Writes one JSON line per rotated key on stdout, `{"name", "old_prefix", "new_key", "old_key_valid_until"}`
(ISO-8601 UTC), for piping into a secret store; the single-key form then prints the raw new key alone as the
last line. Messages go to stderr. A dry run prints the same lines with `"new_key": null` and changes nothing.
"""

import json
from datetime import UTC

from django.core.management.base import CommandError

from apikeys.selectors import api_keys_due_for_rotation
from apikeys.services import (
    DEFAULT_ROTATION_GRACE,
    KeyLookupError,
    api_key_find,
    api_key_rotate,
    api_key_rotation_check,
)

from ._common import KeyCommand, NoRepeatAction, duration, grace_seconds


def _iso_utc(moment) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Command(KeyCommand):
    help = (
        "Rotate an API key: create a successor with the same name, owner, limits, models, budget and expiry, and "
        "keep the old key working for a grace period. With --older-than, rotate every usable key older than that."
    )

    def add_arguments(self, parser):
        parser.add_argument("key_or_prefix", nargs="?", help="the raw key or its prefix")
        parser.add_argument(
            "--older-than",
            type=duration,
            action=NoRepeatAction,
            help="rotate every usable, not yet rotated key created at least this long ago (90d, 12h, 30m, 45s)",
        )
        parser.add_argument(
            "--grace",
            type=grace_seconds,
            default=DEFAULT_ROTATION_GRACE,
            action=NoRepeatAction,
            help=(
                "how long the old key keeps working, in seconds (or 1h, 30m); 0 stops it at once "
                f"(default {int(DEFAULT_ROTATION_GRACE.total_seconds())})"
            ),
        )
        parser.add_argument("--dry-run", action="store_true", help="print what would be rotated; change nothing")

    def handle(self, *args, **options):
        single = options["key_or_prefix"]
        older_than = options["older_than"]
        if (single is None) == (older_than is None):
            raise CommandError("give either a key or prefix, or --older-than (not both).")
        grace = options["grace"]
        if single is not None:
            try:
                api_key = api_key_find(single)
            except KeyLookupError as exc:
                raise CommandError(str(exc)) from None
            failed = self.rotate(api_key, grace, options["dry_run"], print_raw=True)
            if failed:
                raise CommandError(failed)
            return
        keys = list(api_keys_due_for_rotation(older_than=older_than))
        if not keys:
            self.stderr.write(f"No usable key is older than {older_than}.")
            return
        failures = []
        for key in keys:
            failed = self.rotate(key, grace, options["dry_run"])
            if failed:
                # One key that cannot be rotated (revoked meanwhile) must not stop the others.
                self.stderr.write(f"{key.prefix}: {failed}")
                failures.append(failed)
        verb = "Would rotate" if options["dry_run"] else "Rotated"
        self.stderr.write(f"{verb} {len(keys) - len(failures)} of {len(keys)} key(s).")
        if failures:
            raise CommandError(f"{len(failures)} key(s) could not be rotated (see above).")

    def rotate(self, api_key, grace, dry_run: bool, print_raw: bool = False) -> str | None:
        """Rotate one key (or check it, for a dry run) and print its line; return an error message or None."""
        try:
            if dry_run:
                valid_until = api_key_rotation_check(api_key=api_key, grace=grace)
                raw = None
            else:
                successor, raw = api_key_rotate(api_key=api_key, grace=grace, actor="command:rotate_api_key")
                valid_until = successor.predecessor.valid_until()
        except ValueError as exc:  # KeyStateError, KeyInputError
            return str(exc)
        line = {
            "name": api_key.name,
            "old_prefix": api_key.prefix,
            "new_key": raw,
            "old_key_valid_until": _iso_utc(valid_until),
        }
        self.stdout.write(json.dumps(line))
        if raw is None:
            until = line["old_key_valid_until"]
            self.stderr.write(f"{api_key.prefix} ({api_key.name}): would rotate; the old key would work until {until}.")
        else:
            self.stderr.write(
                f"{api_key.prefix} ({api_key.name}) rotated to {successor.prefix}; the old key works until "
                f"{line['old_key_valid_until']}. Store the new key now: it is not shown again."
            )
            if print_raw:
                self.stdout.write(raw)
        return None
