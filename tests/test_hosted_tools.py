"""Hosted tools are an admin's choice and cost money: a key's hosted-tool allowlist is enforced (403, `param:
"tools"`, before any upstream call; function tools always pass), set with `create_api_key --hosted-tools` and kept on
rotation; calls of hosted tools in the output are counted per request and priced per call from the audited tool
price table, seeded with list prices."""

import importlib
from decimal import Decimal
from io import StringIO

import openai
import pytest
from django.apps import apps as django_apps
from django.core.management import call_command

from apikeys.models import APIKey
from apikeys.services import api_key_rotate
from tests.conftest import assert_openai_error
from tests.test_usage_recording import wait_for_records
from usage import pricing
from usage.models import PriceAuditEntry, ToolPrice
from usage.services import tool_price_create, tool_price_update

MODEL = "gpt-4o-mini"
FUNCTION = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}


def test_a_key_may_use_only_its_hosted_tools(gateway, fake_upstream, make_key, http):
    key, raw = make_key(name="tools", hosted_tools=["file_search"])
    auth = {"Authorization": f"Bearer {raw}"}
    fake_upstream.clear()
    refused = http.post(
        "/v1/responses",
        json={"model": MODEL, "input": "x", "tools": [{"type": "file_search"}, {"type": "web_search"}]},
        headers=auth,
    )
    error = assert_openai_error(refused, 403, param="tools", code="tool_not_allowed")
    assert "web_search" in error["message"]
    assert fake_upstream.requests() == []
    client = gateway.client(raw)
    with pytest.raises(openai.PermissionDeniedError):
        client.responses.create(model=MODEL, input="x", tools=[{"type": "code_interpreter", "container": {}}])
    allowed = client.responses.create(model=MODEL, input="x", tools=[{"type": "file_search"}, FUNCTION])
    assert next(item.type for item in allowed.output) == "file_search_call"
    records = wait_for_records(3, key_prefix=key.prefix)
    assert sorted(r.error_type for r in records) == ["", "tool_not_allowed", "tool_not_allowed"]


def test_hosted_tool_calls_are_counted_and_priced_per_call(start_gateway, make_key):
    # Rows as the seed migration writes them (a transactional test starts from empty tables).
    tool_price_create(actor="test", tool="web_search_call", per_call_usd=Decimal("0.01"))
    tool_price_create(actor="test", tool="code_interpreter_call", per_call_usd=Decimal("0.03"))
    gateway = start_gateway("tool-prices", env={"PRICE_CACHE_SECONDS": "0.2"})
    key, raw = make_key(name="priced-tools")
    response = gateway.client(raw).responses.create(
        model=MODEL,
        input="search the web",
        tools=[{"type": "web_search"}, FUNCTION],
        extra_body={"fake": {"hosted_calls": {"web_search_call": 1, "code_interpreter_call": 1}}},
    )
    assert [item.type for item in response.output].count("web_search_call") == 2
    [record] = wait_for_records(1, key_prefix=key.prefix)
    assert record.hosted_tool_calls == 3
    assert record.hosted_tools == "code_interpreter_call:1,web_search_call:2"
    book = pricing.PriceBook(0)
    book.load()
    tokens = book.price_for(MODEL).cost(record.prompt_tokens, record.completion_tokens)
    assert record.cost_usd == tokens + Decimal("0.05")


@pytest.mark.django_db
def test_tool_prices_are_seeded_and_every_change_is_audited():
    # The seed is idempotent; run again here, since a transactional test may have emptied the table before.
    seed_migration = importlib.import_module("usage.migrations.0005_seed_tool_prices")
    seed_migration.seed(django_apps, None)
    seeded = {row.tool: row.per_call_usd for row in ToolPrice.objects.all()}
    assert seeded["web_search_call"] == Decimal("0.01") and seeded["file_search_call"] == Decimal("0.0025")
    price = tool_price_create(actor="admin", tool="mcp_call", per_call_usd=Decimal("0.002"))
    tool_price_update(price=price, actor="admin", per_call_usd=Decimal("0.003"))
    entries = list(PriceAuditEntry.objects.filter(table="tool", price_id=price.pk).order_by("id"))
    assert [entry.action for entry in entries] == ["create", "update"]
    assert entries[1].changes == {"per_call_usd": ["0.002000", "0.003000"]}
    book = pricing.PriceBook(0)
    book.load()
    assert book.tool_price_for("mcp_call") == Decimal("0.003")
    assert book.tool_price_for("unpriced_call") == 0


@pytest.mark.django_db
def test_create_api_key_hosted_tools_flag_and_rotation_keeps_it():
    out = StringIO()
    call_command("create_api_key", "toolkey", "--hosted-tools", "web_search,file_search", stdout=out, stderr=StringIO())
    raw = out.getvalue().strip().splitlines()[-1]
    key = APIKey.objects.get(prefix=raw.split(".")[0])
    assert key.hosted_tools == ["file_search", "web_search"]
    successor, _ = api_key_rotate(api_key=key, grace=0, actor="test")
    assert successor.hosted_tools == ["file_search", "web_search"]
