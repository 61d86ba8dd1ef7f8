"""Helpers shared by the key commands: strict argument types that fail with a one-line message."""

import argparse
import re
from datetime import UTC, datetime, timedelta

from django.utils import timezone

from core.commands import StrictCommand

# The key commands' base: one-line usage errors (core.commands).
KeyCommand = StrictCommand


def iso_datetime(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO-8601 date or date-time, got {value!r}") from None
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, UTC)
    return moment


DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(\d+)([dhms])")


def duration(value: str) -> timedelta:
    """`90d`, `12h`, `30m` or `45s` (days, hours, minutes, seconds) as a timedelta."""
    match = _DURATION.fullmatch(value.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a duration like 90d, 12h, 30m or 45s, got {value!r}")
    return timedelta(seconds=int(match[1]) * DURATION_UNITS[match[2]])


def grace_seconds(value: str) -> timedelta:
    """A grace period: whole seconds (`3600`) or a duration (`1h`); never negative."""
    text = value.strip()
    if text.lstrip("-").isdigit():
        seconds = int(text)
        if seconds < 0:
            raise argparse.ArgumentTypeError(f"grace must not be negative, got {seconds}")
        return timedelta(seconds=seconds)
    try:
        return duration(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a grace period in seconds (or like 1h, 30m), got {value!r}"
        ) from None


def expiry(value: str) -> datetime:
    """An ISO-8601 date or date-time, or a duration from now (`30d`)."""
    if _DURATION.fullmatch(value.strip().lower()):
        return timezone.now() + duration(value)
    return iso_datetime(value)


class NoRepeatAction(argparse.Action):
    """Store a value, refusing a flag given twice (`--rpm 5 --rpm 50` is a mistake, not a choice)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, f"_seen_{self.dest}", False):
            parser.error(f"{option_string} given more than once")
        setattr(namespace, f"_seen_{self.dest}", True)
        setattr(namespace, self.dest, values)


def percent_list(value: str) -> list[int]:
    """`50,80,100`: whole percentages from 1 to 1000."""
    try:
        numbers = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole percentages like 50,80,100, got {value!r}") from None
    if not numbers or any(not 1 <= n <= 1000 for n in numbers):
        raise argparse.ArgumentTypeError(f"expected whole percentages from 1 to 1000, got {value!r}")
    return numbers
