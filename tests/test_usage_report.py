"""`manage.py usage_report`: totals per key and model, date bounds, formats, and one-line errors."""

import csv
import io
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apikeys.models import APIKey
from apikeys.services import api_key_create
from tests.conftest import ROOT, server_database_url
from usage.models import UsageRecord
from usage.rollups import rollup_rebuild

COLUMNS = ["key_name", "key_prefix", "model", "requests", "prompt_tokens", "completion_tokens", "cost_usd"]
BY_ENDPOINT = ["key_name", "key_prefix", "model", "endpoint", *COLUMNS[3:]]


def record(api_key, *, at, model="gpt-4o-mini", prompt=10, completion=5, cost="0.00001000", status=200, **fields):
    """A record made directly, then the rollups rebuilt from the records (as a backfill would)."""
    made = UsageRecord.objects.create(
        **fields,
        request_id=f"req_{uuid.uuid4().hex}",
        api_key=api_key,
        key_prefix=api_key.prefix,
        key_name=api_key.name,
        model=model,
        status=status,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cost_usd=Decimal(cost),
        created_at=at,
    )
    rollup_rebuild()
    return made


def report(*args) -> str:
    out = io.StringIO()
    call_command("usage_report", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def usage(db):
    alpha, alpha_raw = api_key_create(name="alpha", actor="test")
    beta, _ = api_key_create(name="beta", actor="test")
    record(alpha, at=datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC), prompt=100, completion=50, cost="0.00125000")
    record(alpha, at=datetime(2026, 2, 1, 0, 0, 0, tzinfo=UTC), prompt=7, completion=3, cost="0.00000033")
    record(alpha, at=datetime(2026, 2, 1, 12, 0, tzinfo=UTC), model="gpt-4o", prompt=20, completion=10, cost="0.0002")
    record(alpha, at=datetime(2026, 2, 2, 1, 0, tzinfo=UTC), status=429, prompt=0, completion=0, cost="0")
    record(beta, at=datetime(2026, 2, 15, tzinfo=UTC), prompt=1, completion=1, cost="0.00000002")
    return alpha, alpha_raw, beta


def test_json_totals_per_key_and_model(usage):
    alpha, _, beta = usage
    rows = json.loads(report("--format", "json"))
    assert all(list(row) == COLUMNS for row in rows)
    assert rows == [
        {
            "key_name": "alpha", "key_prefix": alpha.prefix, "model": "gpt-4o", "requests": 1,
            "prompt_tokens": 20, "completion_tokens": 10, "cost_usd": "0.00020000",
        },
        {
            "key_name": "alpha", "key_prefix": alpha.prefix, "model": "gpt-4o-mini", "requests": 3,
            "prompt_tokens": 107, "completion_tokens": 53, "cost_usd": "0.00125033",
        },
        {
            "key_name": "beta", "key_prefix": beta.prefix, "model": "gpt-4o-mini", "requests": 1,
            "prompt_tokens": 1, "completion_tokens": 1, "cost_usd": "0.00000002",
        },
    ]  # fmt: skip


def test_since_and_until_are_inclusive_utc_days(usage):
    rows = json.loads(report("--format", "json", "--until", "2026-01-31"))
    assert [(r["model"], r["requests"], r["prompt_tokens"]) for r in rows] == [("gpt-4o-mini", 1, 100)]
    rows = json.loads(report("--format", "json", "--since", "2026-02-01", "--until", "2026-02-01"))
    assert [(r["model"], r["requests"]) for r in rows] == [("gpt-4o", 1), ("gpt-4o-mini", 1)]
    rows = json.loads(report("--format", "json", "--since", "2026-02-02"))
    assert [(r["key_name"], r["requests"]) for r in rows] == [("alpha", 1), ("beta", 1)]
    assert json.loads(report("--format", "json", "--since", "2027-01-01")) == []


def test_key_by_prefix_or_raw_key(usage):
    alpha, alpha_raw, _ = usage
    by_prefix = json.loads(report("--format", "json", "--key", alpha.prefix))
    assert {r["key_name"] for r in by_prefix} == {"alpha"} and len(by_prefix) == 2
    assert json.loads(report("--format", "json", "--key", alpha_raw)) == by_prefix


def test_a_deleted_keys_usage_is_still_reported_by_prefix(usage):
    alpha, _, _ = usage
    APIKey.objects.filter(pk=alpha.pk).delete()
    rows = json.loads(report("--format", "json", "--key", alpha.prefix))
    assert sum(r["requests"] for r in rows) == 4


def test_csv_and_table(usage):
    alpha, _, _ = usage
    rows = list(csv.DictReader(io.StringIO(report("--format", "csv"))))
    assert list(rows[0]) == COLUMNS
    assert [(r["key_name"], r["model"], r["requests"], r["cost_usd"]) for r in rows] == [
        ("alpha", "gpt-4o", "1", "0.00020000"),
        ("alpha", "gpt-4o-mini", "3", "0.00125033"),
        ("beta", "gpt-4o-mini", "1", "0.00000002"),
    ]
    table = report().splitlines()
    assert table[0].split() == COLUMNS
    assert table[-1].split() == ["TOTAL", "5", "128", "64", "0.00145035"]
    assert any(line.split()[:3] == ["alpha", alpha.prefix, "gpt-4o-mini"] for line in table)


def test_empty_report(db):
    assert json.loads(report("--format", "json")) == []
    assert report("--format", "csv").strip() == ",".join(COLUMNS)
    assert "No usage" in report()


def test_errors_in_process(usage):
    alpha, _, _ = usage
    with pytest.raises(CommandError, match="No API key matches"):
        report("--key", "nosuchkey")
    wrong_secret = alpha.prefix + ".wrongsecret"
    with pytest.raises(CommandError) as caught:
        report("--key", wrong_secret)
    assert "wrongsecret" not in str(caught.value)
    with pytest.raises(CommandError, match="after"):
        report("--since", "2026-03-01", "--until", "2026-02-01")
    with pytest.raises(CommandError, match="YYYY-MM-DD"):
        report("--since", "2026-02-30")


@pytest.fixture
def endpoint_usage(usage):
    """`usage` (chat completions: records that name no endpoint are chat) plus embeddings and a moderation."""
    alpha, _, beta = usage
    at = datetime(2026, 2, 3, tzinfo=UTC)
    record(
        alpha, at=at, model="text-embedding-3-small", prompt=500, completion=0, cost="0.00001", endpoint="embeddings"
    )
    record(
        alpha, at=at, model="text-embedding-3-small", prompt=300, completion=0, cost="0.000006", endpoint="embeddings"
    )
    record(beta, at=at, model="omni-moderation-latest", prompt=0, completion=0, cost="0", endpoint="moderations")
    # A legacy completion under a model name chat also uses: --by-endpoint keeps them apart.
    record(alpha, at=at, model="gpt-4o-mini", prompt=4, completion=4, cost="0.00000100", endpoint="completions")
    return usage


def test_the_default_report_keeps_its_columns_and_counts_every_endpoint(endpoint_usage):
    alpha, _, _ = endpoint_usage
    rows = json.loads(report("--format", "json"))
    assert all(list(row) == COLUMNS for row in rows)
    mini = next(r for r in rows if r["key_prefix"] == alpha.prefix and r["model"] == "gpt-4o-mini")
    assert (mini["requests"], mini["prompt_tokens"], mini["cost_usd"]) == (4, 111, "0.00125133")
    assert report().splitlines()[0].split() == COLUMNS


def test_endpoint_filter(endpoint_usage):
    alpha, _, _ = endpoint_usage
    rows = json.loads(report("--format", "json", "--endpoint", "embeddings"))
    assert rows == [
        {
            "key_name": "alpha", "key_prefix": alpha.prefix, "model": "text-embedding-3-small", "requests": 2,
            "prompt_tokens": 800, "completion_tokens": 0, "cost_usd": "0.00001600",
        }
    ]  # fmt: skip
    chat = json.loads(report("--format", "json", "--endpoint", "chat.completions"))
    assert sum(r["requests"] for r in chat) == 5  # the records of before endpoints were recorded
    assert json.loads(report("--format", "json", "--endpoint", "moderations", "--until", "2026-01-31")) == []
    assert "No usage" in report("--endpoint", "moderations", "--until", "2026-01-31")


def test_by_endpoint_adds_a_column_and_splits_rows(endpoint_usage):
    alpha, _, beta = endpoint_usage
    rows = json.loads(report("--format", "json", "--by-endpoint", "--key", alpha.prefix))
    assert all(list(row) == BY_ENDPOINT for row in rows)
    assert [(r["model"], r["endpoint"], r["requests"]) for r in rows] == [
        ("gpt-4o", "chat.completions", 1),
        ("gpt-4o-mini", "chat.completions", 3),
        ("gpt-4o-mini", "completions", 1),
        ("text-embedding-3-small", "embeddings", 2),
    ]
    csv_rows = list(
        csv.DictReader(io.StringIO(report("--format", "csv", "--by-endpoint", "--endpoint", "moderations")))
    )
    assert list(csv_rows[0]) == BY_ENDPOINT
    assert [(r["key_prefix"], r["endpoint"], r["cost_usd"]) for r in csv_rows] == [
        (beta.prefix, "moderations", "0.00000000")
    ]
    table = report("--by-endpoint").splitlines()
    assert table[0].split() == BY_ENDPOINT
    assert table[-1].split() == ["TOTAL", "9", "932", "68", "0.00146735"]


def test_an_unknown_endpoint_is_an_error(endpoint_usage):
    with pytest.raises(CommandError, match="Unknown endpoint 'chat'"):
        report("--endpoint", "chat")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--since", "yesterday"], 2, "expected a date as YYYY-MM-DD"),
        (["--until", "2026-13-01"], 2, "expected a date as YYYY-MM-DD"),
        (["--format", "xml"], 2, "invalid choice"),
        (["--key", "abcdefgh.secretsecret"], 1, "No API key matches that key or prefix."),
        (["--endpoint", "images"], 1, "Unknown endpoint 'images'; expected one of: chat.completions, completions"),
    ],
)
def test_errors_on_the_command_line_are_one_line_and_non_zero(transactional_db, args, code, message):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.base", "DATABASE_URL": server_database_url()}
    done = subprocess.run(
        [sys.executable, "manage.py", "usage_report", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == code, done.stderr
    lines = [line for line in done.stderr.splitlines() if " INFO " not in line]  # app start-up log lines
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "secretsecret" not in done.stderr + done.stdout
