"""`manage.py list_teams [--json]`: teams as a table, or as a JSON array."""

import json
from dataclasses import asdict

from apikeys.selectors import team_list, team_row

from ._common import KeyCommand

COLUMNS = (
    ("NAME", "name"),
    ("RPM", "rpm"),
    ("TPM", "tpm"),
    ("CONC", "max_concurrent"),
    ("MODELS", "models"),
    ("BUDGET", "budget"),
    ("ALERTS", "alert_thresholds"),
    ("KEYS", "keys"),
    ("ADMINS", "admins"),
)


def _cell(row, field: str) -> str:
    if field == "models":
        return ",".join(row.models) or "all"
    if field == "budget":
        return f"${row.budget_usd}/{row.budget_period}" if row.budget_usd is not None else "-"
    if field in ("alert_thresholds", "admins"):
        return ",".join(str(v) for v in getattr(row, field)) or "-"
    value = getattr(row, field)
    return "-" if value in (None, "") else str(value)


class Command(KeyCommand):
    help = "List teams with their shared limits, budget, alert thresholds, number of keys and admins."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="a JSON array instead of a table")

    def handle(self, *args, **options):
        rows = [team_row(team) for team in team_list()]
        if options["json"]:
            self.stdout.write(json.dumps([asdict(row) for row in rows], indent=2))
            return
        if not rows:
            self.stderr.write("No teams.")
            return
        table = [[title for title, _ in COLUMNS]] + [[_cell(row, field) for _, field in COLUMNS] for row in rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
        for line in table:
            self.stdout.write("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
