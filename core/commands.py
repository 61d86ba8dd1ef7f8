"""What every management command of Tollgate shares."""

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
