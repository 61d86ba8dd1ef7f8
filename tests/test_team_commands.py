"""The team commands, exact interface: `create_team NAME [--budget-usd X] [--budget-period day|month|total] [--rpm N]
[--tpm N] [--max-concurrent N] [--models a,b]`, `create_api_key NAME --team TEAM`, `list_teams [--json]` and
`usage_report --team TEAM`; bad input exits non-zero with one line and changes nothing."""

import io
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apikeys.models import APIKey, AuditLogEntry, Team
from apikeys.services import api_key_create
from tests.conftest import manage_py
from usage.models import UsageRecord
from usage.rollups import rollup_rebuild


def run(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


manage = manage_py


def state() -> tuple:
    return (
        list(Team.objects.order_by("pk").values()),
        list(APIKey.objects.order_by("pk").values_list("prefix", "team_id")),
        AuditLogEntry.objects.count(),
    )


def test_create_team_with_every_option_prints_it_and_audits_it(db):
    out, err = run(
        "create_team", "research", "--budget-usd", "250.50", "--budget-period", "day", "--rpm", "60", "--tpm",
        "90000", "--max-concurrent", "4", "--models", "gpt-4o-mini,gpt-4o",
    )  # fmt: skip
    printed = json.loads(out)
    assert printed["name"] == "research" and "research" in err
    team = Team.objects.get(name="research")
    assert (team.rpm, team.tpm, team.max_concurrent) == (60, 90000, 4)
    assert team.budget_usd == Decimal("250.50") and team.budget_period == "day"
    assert sorted(team.allowed_models) == ["gpt-4o", "gpt-4o-mini"]
    assert Decimal(printed["budget_usd"]) == team.budget_usd and printed["keys"] == 0
    assert AuditLogEntry.objects.filter(actor="command:create_team").exists()


def test_a_key_created_in_a_team_is_listed_with_it(db):
    run("create_team", "platform", "--rpm", "10")
    out, _ = run("create_api_key", "ci-runner", "--team", "platform")
    raw = out.strip().splitlines()[-1]
    key = APIKey.objects.get_from_key(raw)
    assert key.team is not None and key.team.name == "platform"
    rows = json.loads(run("list_teams", "--json")[0])
    assert [(row["name"], row["keys"], row["rpm"]) for row in rows] == [("platform", 1, 10)]
    table = run("list_teams")[0].splitlines()
    assert table[0].split()[:2] == ["NAME", "RPM"] and table[1].split()[:2] == ["platform", "10"]


def test_usage_report_for_a_team_counts_only_its_keys(db):
    run("create_team", "blue")
    ours, _ = api_key_create(name="ours", actor="test", team=Team.objects.get(name="blue"))
    theirs, _ = api_key_create(name="theirs", actor="test")
    for api_key, prompt in ((ours, 10), (ours, 20), (theirs, 1000)):
        UsageRecord.objects.create(
            request_id=f"req_{uuid.uuid4().hex}", api_key=api_key, key_prefix=api_key.prefix, key_name=api_key.name,
            model="gpt-4o-mini", status=200, prompt_tokens=prompt, completion_tokens=1, total_tokens=prompt + 1,
            cost_usd=Decimal("0.00000100"), created_at=datetime(2026, 3, 2, 12, tzinfo=UTC),
        )  # fmt: skip
    rollup_rebuild()
    rows = json.loads(run("usage_report", "--team", "blue", "--format", "json")[0])
    assert [(r["key_prefix"], r["requests"], r["prompt_tokens"]) for r in rows] == [(ours.prefix, 2, 30)]


@pytest.mark.parametrize(
    "args",
    [
        ("create_team", "dup"),  # the name exists (created first below)
        ("create_team", "x", "--rpm", "-1"),
        ("create_team", "x", "--budget-period", "week"),
        ("create_team", "x", "--budget-usd", "lots"),
        ("create_team", "x", "--rpm", "1", "--rpm", "2"),
        ("create_api_key", "k", "--team", "no-such-team"),
        ("usage_report", "--team", "no-such-team"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line_and_changes_nothing(transactional_db, args):
    run("create_team", "dup")
    before = state()
    with pytest.raises(CommandError):
        run(*args)
    assert state() == before
    # The same through a real process: a non-zero exit and a one-line message on stderr.
    process = manage(*args)
    assert process.returncode != 0
    assert len(process.stderr.strip().splitlines()) == 1, process.stderr
    assert state() == before
