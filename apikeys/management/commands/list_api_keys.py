"""`manage.py list_api_keys [--status active|revoked|expired|all] [--json]`: keys as a table, or as JSON.

Never prints a hash or a raw key: a key is known by its prefix.
"""

import json
from dataclasses import asdict

from apikeys.selectors import KeyStatus, api_key_list, api_key_row

from ._common import KeyCommand

COLUMNS = (
    ("PREFIX", "prefix"),
    ("NAME", "name"),
    ("OWNER", "owner"),
    ("STATUS", "status"),
    ("RPM", "rpm"),
    ("TPM", "tpm"),
    ("CONC", "max_concurrent"),
    ("MODELS", "allowed_models"),
    ("BUDGET", "budget"),
    ("CREATED", "created"),
    ("VALID UNTIL", "valid_until"),
    ("LAST USED", "last_used_at"),
)


def _cell(row, field: str) -> str:
    if field == "status":
        return KeyStatus.LABELS[row.status]
    if field == "allowed_models":
        return ",".join(row.allowed_models) or "all"
    if field == "budget":
        return f"${row.budget_usd}/{row.budget_period}" if row.budget_usd is not None else "-"
    if field in ("created", "valid_until", "last_used_at"):
        value = getattr(row, field)
        return value[:16].replace("T", " ") if value else "-"
    value = getattr(row, field)
    return "-" if value in (None, "") else str(value)


class Command(KeyCommand):
    help = (
        "List API keys. --status active lists every key that works right now: active, expiring soon and in "
        "grace after a rotation; expired includes rotated keys whose grace ended. Default: all."
    )

    def add_arguments(self, parser):
        parser.add_argument("--status", choices=["active", "revoked", "expired", "all"], default="all")
        parser.add_argument("--json", action="store_true", help="a JSON array instead of a table")

    def handle(self, *args, **options):
        rows = [api_key_row(key) for key in api_key_list(status=options["status"])]
        if options["json"]:
            self.stdout.write(json.dumps([asdict(row) for row in rows], indent=2))
            return
        if not rows:
            self.stderr.write(f"No keys ({options['status']}).")
            return
        table = [[title for title, _ in COLUMNS]] + [[_cell(row, field) for _, field in COLUMNS] for row in rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
        for line in table:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
