"""`manage.py rebuild_usage_rollups [--since YYYY-MM-DD]`.

Recomputes the hourly usage rollups from the usage records, from midnight UTC of `--since` (default: all of them),
in one transaction: for a backfill (records loaded without the writer) or after a repair. On the same records
the result equals what the usage writer produced. Do not rebuild from before the retention horizon: the rollups of
purged hours would be recomputed from no records (and so removed).
"""

from datetime import UTC, date, datetime

from core.commands import StrictCommand
from usage.management.commands.usage_report import utc_day
from usage.rollups import rollup_rebuild


class Command(StrictCommand):
    help = "Recompute the hourly usage rollups from the usage records (from --since, a UTC day; default: all)."

    def add_arguments(self, parser):
        parser.add_argument("--since", type=utc_day, metavar="YYYY-MM-DD", help="First UTC day to rebuild.")

    def handle(self, *args: str, since: date | None = None, **options: object) -> None:
        start = datetime(since.year, since.month, since.day, tzinfo=UTC) if since else None
        rows = rollup_rebuild(since=start)
        where = f"from {since}" if since else "from every record"
        self.stdout.write(f"Rebuilt the usage rollups {where}: {rows} rollup rows.")
