"""`manage.py enable_upstream NAME`: route to an upstream again (audited)."""

from .disable_upstream import Command as DisableCommand


class Command(DisableCommand):
    help = "Enable an upstream again."
    enabled = True
    command_name = "enable_upstream"
