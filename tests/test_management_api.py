"""The management API (`/api/manage/v1/`), driven by a plain HTTP client against a live gateway: create → use with
the SDK → rotate → revoke; team-scoped tokens; Idempotency-Key; errors in OpenAI's shape; usage totals; the token
commands. Management tokens and gateway keys are not interchangeable (401 both ways)."""

import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from apikeys.models import APIKey, AuditLogEntry
from apikeys.services import team_create
from manageapi.services import management_token_create
from tests.conftest import ROOT, assert_openai_error, server_database_url

MESSAGES = [{"role": "user", "content": "managed"}]
KEY_CACHE_PROMISE = 1.0  # KEY_CACHE_CHECK_SECONDS (0.25 s) with room to spare


def _api(gateway, raw_token: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{gateway.url}/api/manage/v1", headers={"Authorization": f"Bearer {raw_token}"}, timeout=30
    )


@pytest.fixture
def token(transactional_db):
    """An unscoped management token: (token, raw)."""
    return management_token_create(name=f"ci-{uuid.uuid4().hex[:8]}")


def _refused_within(client: openai.OpenAI, seconds: float) -> float:
    started = time.monotonic()
    while True:
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        except openai.AuthenticationError:
            return time.monotonic() - started
        except openai.RateLimitError:
            pass  # still accepted (the key's own tight rpm ran out while polling): not yet refused
        assert time.monotonic() - started < seconds, "the key still works"
        time.sleep(0.05)


def test_create_use_rotate_revoke_through_the_api(gateway, token):
    token_obj, raw_token = token
    team = team_create(name=f"platform-{uuid.uuid4().hex[:6]}", actor="test", rpm=100)
    with _api(gateway, raw_token) as api:
        created = api.post(
            "/keys",
            json={
                "name": "ci-runner",
                "team": team.name,
                "rpm": 50,
                "models": ["gpt-4o-mini"],
                "budget_usd": "12.5",
                "budget_period": "day",
                "owner": "ci@example.com",
                "notes": "from terraform",
            },
        )
        assert created.status_code == 201, created.text
        body = created.json()
        raw, prefix = body["key"], body["prefix"]
        assert raw.startswith(prefix + ".")
        assert body["team"] == team.name and body["rpm"] == 50 and body["models"] == ["gpt-4o-mini"]
        assert body["budget_usd"] == "12.5000" and body["budget_period"] == "day" and body["status"] == "active"

        # The key works with the official SDK, with its team's limits applied.
        answer = gateway.client(raw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        assert answer.http_response.status_code == 200
        assert answer.headers["x-ratelimit-limit-requests"] == "50"  # the key's 50 is tighter than the team's 100

        fetched = api.get(f"/keys/{prefix}").json()
        assert "key" not in fetched and fetched["prefix"] == prefix
        assert [k["prefix"] for k in api.get("/keys").json()].count(prefix) == 1

        patched = api.patch(f"/keys/{prefix}", json={"rpm": 7, "notes": "tightened"})
        assert patched.status_code == 200, patched.text
        assert patched.json()["rpm"] == 7 and patched.json()["notes"] == "tightened"

        rotated = api.post(f"/keys/{prefix}/rotate", json={"grace": 0})
        assert rotated.status_code == 201, rotated.text
        new = rotated.json()
        assert new["old_prefix"] == prefix and new["prefix"] != prefix and new["team"] == team.name
        assert new["rpm"] == 7 and new["predecessor"] == prefix
        old_client, new_client = gateway.client(raw), gateway.client(new["key"])
        _refused_within(old_client, KEY_CACHE_PROMISE)
        new_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

        revoked = api.post(f"/keys/{new['prefix']}/revoke")
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
        print(f"\nrevoked through the API, refused after {_refused_within(new_client, KEY_CACHE_PROMISE):.2f} s")
        again = api.post(f"/keys/{new['prefix']}/revoke")
        assert_openai_error(again, 409, code="conflict")

    actors = set(AuditLogEntry.objects.filter(key_prefix__in=[prefix, new["prefix"]]).values_list("actor", flat=True))
    assert actors == {f"token:{token_obj.name}"}
    actions = list(
        AuditLogEntry.objects.filter(key_prefix=prefix).order_by("created_at", "id").values_list("action", flat=True)
    )
    assert actions == ["create", "update", "rotate"]


def test_tokens_and_gateway_keys_are_not_interchangeable(gateway, token, make_key):
    _, raw_token = token
    _, raw_key = make_key(name="gateway-only")
    with _api(gateway, raw_key) as api:
        assert_openai_error(api.get("/keys"), 401, code="invalid_api_key")
    with _api(gateway, "") as api:
        assert_openai_error(api.get("/keys", headers={"Authorization": ""}), 401, code="invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        gateway.client(raw_token).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def test_a_team_token_sees_and_changes_only_its_team(gateway, make_key, transactional_db):
    ours = team_create(name=f"ours-{uuid.uuid4().hex[:6]}", actor="test")
    theirs = team_create(name=f"theirs-{uuid.uuid4().hex[:6]}", actor="test")
    mine, _ = make_key(name="mine", team=ours)
    other, other_raw = make_key(name="other", team=theirs)
    _, raw_token = management_token_create(name=f"team-{uuid.uuid4().hex[:6]}", team=ours)
    with _api(gateway, raw_token) as api:
        assert [k["prefix"] for k in api.get("/keys").json()] == [mine.prefix]
        for method, path, body in (
            ("GET", f"/keys/{other.prefix}", None),
            ("PATCH", f"/keys/{other.prefix}", {"rpm": 1}),
            ("POST", f"/keys/{other.prefix}/rotate", {"grace": 0}),
            ("POST", f"/keys/{other.prefix}/revoke", None),
            ("GET", f"/teams/{theirs.name}", None),
            ("GET", f"/usage?key={other.prefix}", None),
        ):
            assert_openai_error(api.request(method, path, json=body), 404)
        assert_openai_error(api.post("/keys", json={"name": "x", "team": theirs.name}), 403, code="permission_denied")
        assert_openai_error(api.post("/teams", json={"name": "new"}), 403, code="permission_denied")
        assert_openai_error(api.patch(f"/teams/{ours.name}", json={"rpm": 1}), 403, code="permission_denied")
        assert [t["name"] for t in api.get("/teams").json()] == [ours.name]

        created = api.post("/keys", json={"name": "made-in-team"})  # no team given: the token's
        assert created.status_code == 201 and created.json()["team"] == ours.name
        moved = api.patch(f"/keys/{mine.prefix}", json={"team": theirs.name})
        assert_openai_error(moved, 403, code="permission_denied")

    other.refresh_from_db()
    assert other.rpm is None and not other.revoked and other.team_id == theirs.pk
    assert not APIKey.objects.filter(predecessor=other).exists()
    gateway.client(other_raw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def test_a_retried_create_with_an_idempotency_key_returns_the_first_answer(gateway, token):
    _, raw_token = token
    name = f"idem-{uuid.uuid4().hex[:6]}"
    idem = {"Idempotency-Key": uuid.uuid4().hex}
    with _api(gateway, raw_token) as api:
        first = api.post("/keys", json={"name": name, "rpm": 5}, headers=idem)
        second = api.post("/keys", json={"name": name, "rpm": 5}, headers=idem)
        assert first.status_code == second.status_code == 201, (first.text, second.text)
        assert second.json() == first.json()  # the raw key too
        assert second.headers.get("idempotent-replayed") == "true"
        assert APIKey.objects.filter(name=name).count() == 1
        reused = api.post("/keys", json={"name": name, "rpm": 6}, headers=idem)
        assert_openai_error(reused, 409, code="conflict")
        without = api.post("/keys", json={"name": name, "rpm": 5})
        assert without.status_code == 201 and without.json()["prefix"] != first.json()["prefix"]
    assert APIKey.objects.filter(name=name).count() == 2


def test_concurrent_retries_with_one_idempotency_key_create_one_key(gateway, token):
    """Eight copies of one create sent at once (a client retrying before its first answer came): one key is made,
    and every answer is that key's, raw key included."""
    _, raw_token = token
    name = f"idem-race-{uuid.uuid4().hex[:6]}"
    idem = {"Idempotency-Key": uuid.uuid4().hex}

    def create(_):
        with _api(gateway, raw_token) as api:
            return api.post("/keys", json={"name": name, "rpm": 5}, headers=idem)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(create, range(8)))
    assert all(answer.status_code == 201 for answer in answers), [a.text for a in answers]
    assert len({answer.json()["key"] for answer in answers}) == 1
    assert APIKey.objects.filter(name=name).count() == 1


def test_errors_are_openai_shaped_with_the_right_statuses(gateway, token):
    _, raw_token = token
    with _api(gateway, raw_token) as api:
        assert_openai_error(api.post("/keys", json={"name": "bad", "rpm": -1}), 400, param="rpm")
        assert_openai_error(api.post("/keys", json={"rpm": 1}), 400, param="name")
        assert_openai_error(api.post("/keys", json={"name": "bad", "team": "no-such-team"}), 400, param="team")
        assert_openai_error(api.post("/keys", json={"name": "b", "budget_period": "week"}), 400, param="budget_period")
        assert_openai_error(api.get("/keys/nope0000"), 404)
        assert_openai_error(api.post("/teams", json={"name": "t", "models": "gpt-4o"}), 400, param="models")
        assert_openai_error(api.get("/usage?since=2025-02-01&until=2025-01-01"), 400, param="since")
        assert_openai_error(api.delete("/keys"), 405)


def test_teams_and_usage_through_the_api(gateway, token):
    _, raw_token = token
    name = f"api-team-{uuid.uuid4().hex[:6]}"
    with _api(gateway, raw_token) as api:
        created = api.post("/teams", json={"name": name, "rpm": 30, "budget_usd": "100", "models": ["gpt-4o-mini"]})
        assert created.status_code == 201, created.text
        assert created.json()["rpm"] == 30 and created.json()["alert_thresholds"] == [50, 80, 100]
        updated = api.patch(f"/teams/{name}", json={"tpm": 5000, "alert_thresholds": [90]})
        assert updated.json()["tpm"] == 5000 and updated.json()["alert_thresholds"] == [90]
        assert api.get(f"/teams/{name}").json()["keys"] == 0

        key = api.post("/keys", json={"name": "usage-key", "team": name}).json()
        gateway.client(key["key"]).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        deadline = time.monotonic() + 10
        rows = []
        while time.monotonic() < deadline and not rows:
            rows = api.get("/usage", params={"team": name}).json()
            time.sleep(0.2)
        assert [(r["key_prefix"], r["model"], r["requests"]) for r in rows] == [(key["prefix"], "gpt-4o-mini", 1)]
        assert set(rows[0]) == {
            "key_name",
            "key_prefix",
            "model",
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
        }
        assert len(rows[0]["cost_usd"].split(".")[1]) == 8
    assert AuditLogEntry.objects.filter(team_name=name, key_prefix="", actor__startswith="token:").count() == 2


def test_token_commands(gateway, transactional_db):
    team = team_create(name=f"cmd-{uuid.uuid4().hex[:6]}", actor="test")
    name = f"cmd-token-{uuid.uuid4().hex[:6]}"

    def manage(*args):
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=_env()
        )

    made = manage("create_management_token", name, "--team", team.name)
    assert made.returncode == 0, made.stderr
    raw_token = made.stdout.strip().splitlines()[-1]
    with _api(gateway, raw_token) as api:
        assert api.get("/keys").status_code == 200
        twice = manage("create_management_token", name)
        assert twice.returncode != 0 and len(twice.stderr.strip().splitlines()) == 1
        unknown = manage("create_management_token", "other", "--team", "no-such-team")
        assert unknown.returncode != 0 and "No team" in unknown.stderr
        revoked = manage("revoke_management_token", name)
        assert revoked.returncode == 0, revoked.stderr
        assert_openai_error(api.get("/keys"), 401, code="invalid_api_key")
    assert manage("revoke_management_token", name).returncode != 0


def _env() -> dict:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.base", "DATABASE_URL": server_database_url()}
