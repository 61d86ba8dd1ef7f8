"""`manage.py purge_usage [--older-than 90d] [--dry-run]`.

Removes the usage records older than the given age (`Nd`: days; default `USAGE_RETENTION_DAYS`). On PostgreSQL it
drops whole monthly partitions that end before the cutoff (a partition that straddles it is kept whole until a
later run) and deletes the default partition's older rows; on SQLite it deletes the older rows. The hourly rollups
are kept, so dashboards, reports and budgets still count the purged requests. It also creates the coming months'
partitions. `--dry-run` prints what would go and changes nothing.

Cron, daily: `17 3 * * * cd /srv/tollgate && .venv/bin/python manage.py purge_usage --older-than 90d`
"""

import argparse
import re
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from core.commands import StrictCommand
from usage.partitions import usage_partitions_ensure, usage_records_purge


def age(value: str) -> timedelta:
    match = re.fullmatch(r"(\d{1,5})d", value.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected an age in days such as 90d, got {value!r}")
    return timedelta(days=int(match.group(1)))


class Command(StrictCommand):
    help = "Remove usage records older than --older-than (default USAGE_RETENTION_DAYS days); rollups are kept."

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=age, metavar="Nd", help="Age of the records to remove: 90d.")
        parser.add_argument("--dry-run", action="store_true", help="Print what would be removed; change nothing.")

    def handle(self, *args: str, older_than: timedelta | None = None, dry_run: bool = False, **options) -> None:
        older_than = older_than if older_than is not None else timedelta(days=settings.USAGE_RETENTION_DAYS)
        before = timezone.now() - older_than
        if not dry_run:
            for name in usage_partitions_ensure():
                self.stdout.write(f"Created partition {name}.")
        plan = usage_records_purge(before=before, dry_run=dry_run)
        verb = "Would drop" if dry_run else "Dropped"
        for name, rows in plan.partitions:
            self.stdout.write(f"{verb} partition {name} (about {rows} records).")
        verb = "Would delete" if dry_run else "Deleted"
        self.stdout.write(f"{verb} {plan.rows} more records older than {before:%Y-%m-%d %H:%M} UTC (DELETE).")
