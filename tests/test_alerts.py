"""Budget alerts and key-expiry notices, sent by the gateway's own processes: two instances of two workers each
share one database; a real HTTP receiver on loopback takes the webhooks (it fails the first one, so a retry is
needed); emails go through Django's file email backend.

Each threshold crossed by settled spend (key and team) is delivered exactly once, with a valid signature, within
30 s; a reservation later refunded alerts nobody; a key expiring within 7 days is notified once; deliveries and
their attempts are in the database the admin shows.
"""

import json
import threading
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from alerts.models import AlertDelivery, DeliveryStatus
from alerts.rules import signature_valid
from apikeys.services import team_create
from completions.tokens import estimate_prompt_tokens
from tests.conftest import free_port

pytestmark = pytest.mark.slow

SECRET = "alert-signing-secret-for-tests"
TOKEN_USD = Decimal("0.001")
MODEL = "alerts-priced-model"  # priced by the fallback: one token costs exactly 0.001 USD
MESSAGES = [{"role": "user", "content": "spend some"}]
PROMPT = estimate_prompt_tokens(MESSAGES)
PROMISE = 30.0


class Receiver:
    """A webhook receiver on loopback: records every POST (time, headers, body, the status it answered); answers
    503 to the first one, 204 to the rest."""

    def __init__(self):
        self.received: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    status = 503 if not receiver.received else 204
                    receiver.received.append(
                        {"at": time.monotonic(), "headers": dict(self.headers), "body": body, "status": status}
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/tollgate"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[dict]:
        with self.lock:
            return [dict(r, payload=json.loads(r["body"])) for r in self.received if r["status"] == 204]


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.server.shutdown()


def _chat(url: str, raw: str, **extra) -> int:
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, **extra},
        headers={"Authorization": f"Bearer {raw}"},
        timeout=30,
    )
    return response.status_code


def _identity(payload: dict) -> tuple:
    return (payload["event"], payload["scope"], payload["name"], payload.get("threshold"))


def test_each_crossing_is_delivered_once_signed_within_30_s_from_two_instances(
    start_gateway, make_key, receiver, tmp_path
):
    env = {
        "ALERT_WEBHOOK_URL": receiver.url,
        "ALERT_WEBHOOK_SECRET": SECRET,
        "ALERT_CHECK_SECONDS": "0.5",
        "EMAIL_URL": f"filemail:///{tmp_path}",
        "PRICE_FALLBACK_INPUT_PER_MILLION": "1000",
        "PRICE_FALLBACK_OUTPUT_PER_MILLION": "1000",
        "USAGE_FLUSH_SECONDS": "0.1",
    }
    worst = (PROMPT + 20) * TOKEN_USD  # max_tokens=20, and the fake upstream reports exactly that usage
    refunded = (PROMPT + 1) * TOKEN_USD  # a big reservation that settles at one completion token
    admin = get_user_model().objects.create_user("team-lead", "lead@example.com", "x", is_staff=True)
    team = team_create(name=f"alerts-{uuid.uuid4().hex[:6]}", actor="test", budget_usd=10 * worst + refunded)
    team.admins.add(admin)
    key, raw_key = make_key(
        name="budgeted", team=team, budget_usd=5 * worst, owner="owner@example.com", alert_thresholds=[50, 100]
    )
    _, raw_other = make_key(name="team-only", team=team)
    expiring, _ = make_key(name="expiring", expires=timezone.now() + timedelta(days=3), owner="ops@x.org")
    make_key(name="far-off", expires=timezone.now() + timedelta(days=30))

    gateways = [start_gateway(name=f"alerts-{i}", env=env) for i in range(2)]
    usage = {"prompt_tokens": PROMPT, "completion_tokens": 20}

    # A reservation of most of the team's budget, refunded down to almost nothing: it alerts nobody.
    big = {"max_tokens": int(6 * (PROMPT + 20)), "fake": {"usage": {"prompt_tokens": PROMPT, "completion_tokens": 1}}}
    assert _chat(gateways[0].url, raw_other, **big) == 200
    time.sleep(3)
    assert {p["event"] for p in (r["payload"] for r in receiver.delivered())} <= {"key.expiring"}

    crossed_at = {}
    for index in range(5):  # the key: 50% after the 3rd, 100% after the 5th; the team reaches 50%
        assert _chat(gateways[index % 2].url, raw_key, max_tokens=20, fake={"usage": usage}) == 200
        moment = time.monotonic()
        if index == 2:
            crossed_at[("budget.threshold", "key", key.name, 50)] = moment
        if index == 4:
            crossed_at[("budget.threshold", "key", key.name, 100)] = moment
            crossed_at[("budget.threshold", "team", team.name, 50)] = moment
    for index in range(5):  # the team: 80% after the 8th, 100% after the 10th
        assert _chat(gateways[index % 2].url, raw_other, max_tokens=20, fake={"usage": usage}) == 200
        if index == 2:
            crossed_at[("budget.threshold", "team", team.name, 80)] = time.monotonic()
    crossed_at[("budget.threshold", "team", team.name, 100)] = time.monotonic()
    assert _chat(gateways[0].url, raw_other, max_tokens=20, fake={"usage": usage}) == 429  # the cap holds
    expected = {*crossed_at, ("key.expiring", "key", expiring.name, None)}

    deadline = time.monotonic() + PROMISE + 5
    while time.monotonic() < deadline and {_identity(r["payload"]) for r in receiver.delivered()} < expected:
        time.sleep(0.2)
    time.sleep(3)  # any duplicate would arrive now: every worker scans every 0.5 s
    delivered = receiver.delivered()
    identities = [_identity(r["payload"]) for r in delivered]
    print(f"\nwebhooks delivered: {sorted(map(str, identities))}; POSTs received: {len(receiver.received)}")
    assert sorted(identities, key=str) == sorted(expected, key=str)  # each exactly once, nothing else
    assert receiver.received[0]["status"] == 503  # the first try failed and was retried

    for record in delivered:
        assert signature_valid(record["body"], SECRET, record["headers"]["X-Tollgate-Signature"])
        payload = record["payload"]
        identity = _identity(payload)
        if identity in crossed_at:
            latency = record["at"] - crossed_at[identity]
            assert latency < PROMISE, (identity, latency)
        if payload["event"] == "budget.threshold":
            assert Decimal(payload["spent_usd"]) * 100 >= Decimal(payload["budget_usd"]) * payload["threshold"]
            assert payload["period"] == "month" and payload["period_start"].endswith("-01T00:00:00Z")
            if payload["scope"] == "key":
                assert payload["prefix"] == key.prefix and Decimal(payload["budget_usd"]) == 5 * worst
            else:
                assert "prefix" not in payload and Decimal(payload["budget_usd"]) == team.budget_usd
                assert set(payload) == {
                    "event",
                    "scope",
                    "name",
                    "threshold",
                    "spent_usd",
                    "budget_usd",
                    "period",
                    "period_start",
                }
        else:
            assert payload["prefix"] == expiring.prefix

    # Deliveries are recorded (the admin lists them): all sent, one of them on a second attempt.
    webhooks = AlertDelivery.objects.filter(channel="webhook")
    assert webhooks.count() == len(expected)
    assert set(webhooks.values_list("status", flat=True)) == {DeliveryStatus.SENT}
    assert sorted(webhooks.values_list("attempts", flat=True)) == [1] * (len(expected) - 1) + [2]

    # Emails: the key's owner (its two thresholds), the team's admin (three), the expiring key's owner (one).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and AlertDelivery.objects.filter(channel="email", status="sent").count() < 6:
        time.sleep(0.2)
    mails = "\n".join(path.read_text() for path in tmp_path.iterdir())
    assert mails.count("To: owner@example.com") == 2
    assert mails.count("To: lead@example.com") == 3
    assert mails.count("To: ops@x.org") == 1
    assert f"Subject: [Tollgate] team {team.name} has used 80% of its budget" in mails
