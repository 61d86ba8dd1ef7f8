"""`manage.py list_upstreams [--json]`: the upstreams, never their keys."""

import json

from upstreams.selectors import upstream_list, upstream_row

from ._common import UpstreamCommand

COLUMNS = ("name", "kind", "base_url", "priority", "weight", "models", "rpm", "tpm", "enabled")


def _cell(row: dict, field: str) -> str:
    if field == "models":
        served = list(row["models"]) + [f"{public}={target}" for public, target in row["aliases"].items()]
        return ",".join(served) or "all"
    value = row[field]
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else str(value)


class Command(UpstreamCommand):
    help = "List upstreams (no key is ever printed)."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="a JSON array instead of a table")

    def handle(self, *args, **options):
        rows = [upstream_row(upstream) for upstream in upstream_list()]
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        if not rows:
            self.stderr.write("No upstreams: OPENAI_API_KEY and OPENAI_BASE_URL are the one default upstream.")
            return
        table = [[c.upper() for c in COLUMNS]] + [[_cell(row, c) for c in COLUMNS] for row in rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
        for line in table:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
