"""`manage.py disable_upstream NAME`: stop routing to an upstream (audited)."""

from django.core.management.base import CommandError

from upstreams.selectors import upstream_get
from upstreams.services import upstream_set_enabled

from ._common import UpstreamCommand


class Command(UpstreamCommand):
    help = "Disable an upstream: no request is routed to it until it is enabled again."
    enabled = False

    def add_arguments(self, parser):
        parser.add_argument("name")

    def handle(self, *args, **options):
        upstream = upstream_get(name=options["name"])
        if upstream is None:
            raise CommandError(f"no upstream is named {options['name']!r}")
        upstream_set_enabled(upstream=upstream, enabled=self.enabled, actor=f"command:{self.command_name}")
        self.stdout.write(f"{upstream.name} {'enabled' if self.enabled else 'disabled'}")

    command_name = "disable_upstream"
