"""`manage.py usage_report [--key KEY_OR_PREFIX] [--team TEAM] [--since DAY] [--until DAY] [--endpoint NAME]
[--by-endpoint] [--format table|csv|json]`.

Totals per key and model over UTC days: the columns `key_name, key_prefix, model, requests, prompt_tokens,
completion_tokens, cost_usd`, one row per (key, model), ordered by key name, prefix and model.

* `--endpoint NAME` counts only that endpoint's requests (`chat.completions`, `completions`, `embeddings`,
  `moderations`); the columns stay the same. An unknown name (neither served nor ever recorded) is an error.
* `--by-endpoint` splits each row by endpoint and adds an `endpoint` column after `model`: one row per
  (key, model, endpoint), ordered by key name, prefix, model and endpoint.

* `--since` and `--until` are `YYYY-MM-DD` UTC days and both are **inclusive**: `--until 2025-03-31` counts
  everything up to 2025-03-31 23:59:59.999999 UTC.
* `cost_usd` is a string with exactly 8 decimals (the precision stored per record), in every format, so that
  totals are exact and JSON consumers never see binary floating point: `"0.00123400"`.
* `--format json` prints a JSON list of objects with exactly those keys (`[]` when there is no usage);
  `csv` prints a header row then the rows; `table` (the default) also prints a `TOTAL` row.
* `--key` takes a raw key (verified) or a key prefix; a prefix of a deleted key still works if it has usage.
* `--team` counts only the keys now in that team (by name); with `--key`, a key outside the team reports nothing.

A bad date or an unknown key exits non-zero with a one-line message on stderr; the raw key is never echoed.
"""

import argparse
import csv
import json
from collections.abc import Sequence
from datetime import date
from decimal import Decimal

from django.core.management.base import CommandError

from apikeys.services import KeyLookupError, TeamLookupError, api_key_find, team_find
from core.commands import StrictCommand
from usage.endpoint_names import known_endpoints
from usage.selectors import (
    REPORT_COLUMNS,
    REPORT_COLUMNS_BY_ENDPOINT,
    day_bounds,
    format_cost,
    team_key_prefixes,
    usage_endpoint_known,
    usage_key_prefix_known,
    usage_report_rows,
)

COLUMNS = REPORT_COLUMNS
COLUMNS_BY_ENDPOINT = REPORT_COLUMNS_BY_ENDPOINT
NUMERIC = frozenset({"requests", "prompt_tokens", "completion_tokens", "cost_usd"})


def utc_day(value: str) -> date:
    try:
        if len(value) != 10:
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {value!r}") from None


class Command(StrictCommand):
    help = "Usage totals per key and model (UTC days; --since and --until inclusive)."
    columns: Sequence[str] = COLUMNS

    def add_arguments(self, parser):
        parser.add_argument("--key", metavar="KEY_OR_PREFIX", help="Only this key: a raw key or its prefix.")
        parser.add_argument("--team", metavar="TEAM", help="Only the keys of this team (its name).")
        parser.add_argument("--since", type=utc_day, metavar="YYYY-MM-DD", help="First UTC day (inclusive).")
        parser.add_argument("--until", type=utc_day, metavar="YYYY-MM-DD", help="Last UTC day (inclusive).")
        parser.add_argument(
            "--endpoint", metavar="NAME", help=f"Only this endpoint's requests ({', '.join(known_endpoints())})."
        )
        parser.add_argument(
            "--by-endpoint", action="store_true", help="One row per key, model and endpoint (adds an endpoint column)."
        )
        parser.add_argument("--format", dest="output_format", choices=("table", "csv", "json"), default="table")

    def handle(
        self,
        *args: str,
        key: str | None = None,
        team: str | None = None,
        since: date | None = None,
        until: date | None = None,
        endpoint: str | None = None,
        by_endpoint: bool = False,
        output_format: str = "table",
        **options: object,
    ) -> None:
        if since and until and since > until:
            raise CommandError(f"--since {since} is after --until {until}.")
        if endpoint is not None:
            endpoint = endpoint.strip()
            if not usage_endpoint_known(endpoint):
                raise CommandError(f"Unknown endpoint {endpoint!r}; expected one of: {', '.join(known_endpoints())}.")
        key_prefix = self.key_prefix(key) if key is not None else None
        try:
            key_prefixes = team_key_prefixes(team_find(team)) if team is not None else None
        except TeamLookupError as exc:
            raise CommandError(str(exc)) from None
        first, last = day_bounds(since, until)
        self.columns = COLUMNS_BY_ENDPOINT if by_endpoint else COLUMNS
        rows = usage_report_rows(
            key_prefix=key_prefix,
            key_prefixes=key_prefixes,
            endpoint=endpoint,
            by_endpoint=by_endpoint,
            since=first,
            until=last,
        )
        getattr(self, f"write_{output_format}")(rows)

    def key_prefix(self, value: str) -> str:
        value = value.strip()
        try:
            return api_key_find(value).prefix
        except KeyLookupError:
            # A deleted key's usage is kept under its prefix.
            if value and "." not in value and usage_key_prefix_known(value):
                return value
        raise CommandError("No API key matches that key or prefix.")

    def write_json(self, rows: list[dict]) -> None:
        self.stdout.write(json.dumps(rows, indent=2))

    def write_csv(self, rows: list[dict]) -> None:
        writer = csv.DictWriter(self.stdout, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)

    def write_table(self, rows: list[dict]) -> None:
        if not rows:
            self.stdout.write("No usage in this period.")
            return
        columns = self.columns
        total = {name: "" for name in columns}
        total["key_name"] = "TOTAL"
        for name in ("requests", "prompt_tokens", "completion_tokens"):
            total[name] = sum(row[name] for row in rows)
        total["cost_usd"] = format_cost(sum(Decimal(row["cost_usd"]) for row in rows))
        cells = [[str(row[name]) for name in columns] for row in [*rows, total]]
        widths = [max(len(name), *(len(line[i]) for line in cells)) for i, name in enumerate(columns)]

        def line(values: Sequence[str]) -> str:
            return "  ".join(
                value.rjust(width) if name in NUMERIC else value.ljust(width)
                for name, value, width in zip(columns, values, widths, strict=True)
            ).rstrip()

        out = [line(columns), "  ".join("-" * width for width in widths)]
        out += [line(values) for values in cells[:-1]]
        out += ["  ".join("-" * width for width in widths), line(cells[-1])]
        self.stdout.write("\n".join(out))
