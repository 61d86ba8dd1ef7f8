"""`manage.py create_upstream NAME --kind K --base-url URL --api-key KEY [...]`: add an upstream (audited)."""

import json

from django.core.management.base import CommandError

from apikeys.management.commands._common import NoRepeatAction
from core.commands import positive_int, whole_number
from upstreams.crypto import KeyEncryptionError
from upstreams.models import UpstreamKind
from upstreams.selectors import upstream_row
from upstreams.services import UpstreamInvalid, upstream_create

from ._common import UpstreamCommand, alias, model_list


class Command(UpstreamCommand):
    help = "Create an upstream (OpenAI project, Azure OpenAI resource or OpenAI-compatible server)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--kind", required=True, choices=UpstreamKind.values, action=NoRepeatAction)
        parser.add_argument("--base-url", required=True, action=NoRepeatAction)
        parser.add_argument("--api-key", required=True, action=NoRepeatAction)
        parser.add_argument("--models", type=model_list, action=NoRepeatAction, help="served under their own names")
        parser.add_argument(
            "--alias", type=alias, action="append", default=[], help="PUBLIC=UPSTREAM (model or Azure deployment)"
        )
        parser.add_argument("--weight", type=positive_int, default=1, action=NoRepeatAction)
        parser.add_argument("--priority", type=whole_number, default=0, action=NoRepeatAction)
        parser.add_argument("--rpm", type=positive_int, action=NoRepeatAction)
        parser.add_argument("--tpm", type=positive_int, action=NoRepeatAction)
        parser.add_argument("--api-version", default="", action=NoRepeatAction, help="azure: deployment URLs")
        parser.add_argument("--organization", default="", action=NoRepeatAction)
        parser.add_argument("--project", default="", action=NoRepeatAction)

    def handle(self, *args, **options):
        aliases: dict[str, str] = {}
        for public, target in options["alias"]:
            if public in aliases:
                raise CommandError(f"--alias {public} given more than once")
            aliases[public] = target
        try:
            upstream = upstream_create(
                name=options["name"],
                kind=options["kind"],
                base_url=options["base_url"],
                api_key=options["api_key"],
                models=options["models"],
                aliases=aliases,
                weight=options["weight"],
                priority=options["priority"],
                rpm=options["rpm"],
                tpm=options["tpm"],
                api_version=options["api_version"],
                organization=options["organization"],
                project=options["project"],
                actor="command:create_upstream",
            )
        except (UpstreamInvalid, KeyEncryptionError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(json.dumps(upstream_row(upstream)))
