"""What every management command of Tollgate shares."""

import argparse
import sys

from django.core.management.base import BaseCommand, CommandError


class StrictCommand(BaseCommand):
    """A command whose usage errors are one line on stderr and exit 2 (scripts parse stderr)."""

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)

        def one_line_error(message):
            if not parser.called_from_command_line:
                raise CommandError(f"Error: {message}")
            sys.stderr.write(f"{prog_name} {subcommand}: error: {message}\n")
            sys.exit(2)

        parser.error = one_line_error  # type: ignore[method-assign]  # argparse documents overriding it
        return parser


# Argument types shared by the commands of every app: each fails with argparse's one-line message.


def whole_number(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None


def non_negative_int(value: str) -> int:
    number = whole_number(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {number}")
    return number


def positive_int(value: str) -> int:
    number = whole_number(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number
