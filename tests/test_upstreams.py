"""Several upstreams: three fake upstreams on loopback (A and B OpenAI-shaped, C Azure-shaped), each with its own key,
and real gateways routing between them (README "Upstreams").

The weighted spread, failover with an upstream killed under load, a 429-answering upstream resting, Azure's request
shape and error shape, key isolation, encrypted keys (absent from a full database dump), the commands, the model
list, and a stored response fetched through the upstream that holds it after its creation failed over.
"""

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter

import httpx
import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.conftest import FakeUpstream, assert_openai_error, server_database_url
from upstreams.models import Upstream, UpstreamAuditEntry
from upstreams.selection import weighted_order
from upstreams.targets import Target
from usage.models import UsageRecord

KEY_A = "sk-proj-upstream-A-" + "a" * 40
KEY_B = "sk-proj-upstream-B-" + "b" * 40
KEY_C = "azure-key-upstream-C-" + "c" * 24
ENCRYPTION_KEY = Fernet.generate_key().decode()
CHAT = "/v1/chat/completions"


def forget_routing_state() -> None:
    """Upstream health and caps of earlier tests (the same names) live in the test Redis: start afresh."""
    if os.environ.get("REDIS_URL"):
        import redis

        with redis.Redis.from_url(os.environ["REDIS_URL"]) as client:
            names = list(client.scan_iter("tollgate:upstream:*"))
            if names:
                client.delete(*names)


@pytest.fixture(scope="module", autouse=True)
def _other_gateways_forget_these_upstreams():
    """Gateways of other modules (the session's) reload the upstream table every 2 s (UPSTREAM_CACHE_SECONDS): after
    this module's rows are gone, give them that long, so that no later test meets them."""
    yield
    time.sleep(2.5)


@pytest.fixture
def fakes(server_logs):
    """A and B: OpenAI-shaped, each requiring its own key; C: an Azure OpenAI resource (api-key header)."""
    forget_routing_state()
    servers = {
        "a": FakeUpstream(server_logs / "up-a.log", ("--require-key", KEY_A)),
        "b": FakeUpstream(server_logs / "up-b.log", ("--require-key", KEY_B)),
        "c": FakeUpstream(server_logs / "up-c.log", ("--require-key", KEY_C, "--azure")),
    }
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def encryption(settings):
    settings.UPSTREAM_KEY_ENCRYPTION_KEYS = ENCRYPTION_KEY
    return ENCRYPTION_KEY


@pytest.fixture
def routed_gateway(start_gateway, encryption):
    """A gateway that sees the upstreams created before it starts (and within 0.2 s of any change)."""

    def start(workers=2, **env):
        return start_gateway(
            name="upstreams",
            workers=workers,
            env={
                "UPSTREAM_KEY_ENCRYPTION_KEYS": ENCRYPTION_KEY,
                "UPSTREAM_CACHE_SECONDS": "0.2",
                "USAGE_FLUSH_SECONDS": "0.1",
                **env,
            },
        )

    return start


def create(name, fake, key, *args):
    kind = "azure" if "--azure" in args else "openai"
    args = tuple(a for a in args if a != "--azure")
    base = fake.url if kind == "azure" else f"{fake.url}/v1"
    call_command("create_upstream", name, "--kind", kind, "--base-url", base, "--api-key", key, *args)


def set_mode(fake, **query):
    httpx.post(f"{fake.url}/_fake/mode", params=query, timeout=5).raise_for_status()


def chat(gateway, raw, content="hi", **body):
    return httpx.post(
        f"{gateway.url}{CHAT}",
        headers={"Authorization": f"Bearer {raw}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **body},
        timeout=30,
    )


def v1_requests(fake) -> list[dict]:
    return [r for r in fake.requests() if r["path"].startswith(("/v1/", "/openai/"))]


async def _many(url: str, raw: str, count: int, concurrency: int = 16, stream: bool = False) -> list[int]:
    statuses: list[int] = []
    queue = list(range(count))
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {raw}"}) as client:

        async def worker():
            while queue:
                queue.pop()
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": stream}
                response = await client.post(f"{url}{CHAT}", json=body)
                ok = response.status_code == 200 and (not stream or "data: [DONE]" in response.text)
                statuses.append(response.status_code if ok else -response.status_code or -1)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


# -- selection ----------------------------------------------------------------------------------------------------


def test_weighted_order_spreads_3_to_1():
    """The draw itself: over 2,000 draws the first pick of weights 3:1 is within 5 points of 75/25."""
    import random

    rng = random.Random(13)
    a = Target(name="a", kind="openai", base_url="http://a/v1", api_key="k", weight=3)
    b = Target(name="b", kind="openai", base_url="http://b/v1", api_key="k", weight=1)
    firsts = Counter(weighted_order([a, b], rng)[0].name for _ in range(2000))
    assert abs(firsts["a"] / 2000 - 0.75) < 0.05, firsts
    # Every upstream comes in the order once: the failover's next candidates.
    assert sorted(t.name for t in weighted_order([a, b], rng)) == ["a", "b"]


def test_two_upstreams_weighted_3_to_1_share_2000_requests_and_never_see_each_others_keys(
    fakes, routed_gateway, make_key
):
    create("a", fakes["a"], KEY_A, "--weight", "3")
    create("b", fakes["b"], KEY_B, "--weight", "1")
    gateway = routed_gateway()
    _, raw = make_key()
    statuses = asyncio.run(_many(gateway.url, raw, 2000, concurrency=16))
    assert Counter(statuses) == {200: 2000}
    seen_a, seen_b = v1_requests(fakes["a"]), v1_requests(fakes["b"])
    assert len(seen_a) + len(seen_b) == 2000
    share = len(seen_a) / 2000
    assert abs(share - 0.75) < 0.05, (len(seen_a), len(seen_b))
    # Each upstream got its own key only, never the other's (nor ours).
    assert {r["headers"]["authorization"] for r in seen_a} == {f"Bearer {KEY_A}"}
    assert {r["headers"]["authorization"] for r in seen_b} == {f"Bearer {KEY_B}"}
    for record in seen_a:
        assert KEY_B not in json.dumps(record) and raw not in json.dumps(record)
    for record in seen_b:
        assert KEY_A not in json.dumps(record)
    # The usage records name the upstream that answered.
    deadline = time.monotonic() + 10
    while UsageRecord.objects.count() < 2000 and time.monotonic() < deadline:
        time.sleep(0.2)
    by_upstream = Counter(UsageRecord.objects.values_list("upstream", flat=True))
    assert by_upstream == {"a": len(seen_a), "b": len(seen_b)}


# -- failover and health ------------------------------------------------------------------------------------------


def test_an_upstream_killed_under_load_costs_no_client_an_error(fakes, routed_gateway, make_key):
    create("a", fakes["a"], KEY_A)
    create("b", fakes["b"], KEY_B)
    create("c", fakes["c"], KEY_C, "--azure")
    gateway = routed_gateway()
    _, raw = make_key()
    results: dict[str, list] = {"plain": [], "stream": []}
    killed_at: list[float] = []
    stop = threading.Event()

    def load(kind: str) -> None:
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {raw}"}) as client:
            while not stop.is_set():
                sent = time.monotonic()
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
                if kind == "stream":
                    body["stream"] = True
                response = client.post(f"{gateway.url}{CHAT}", json=body)
                ok = response.status_code == 200 and (kind == "plain" or "data: [DONE]" in response.text)
                results[kind].append((sent, ok, response.status_code, response.text[:200]))

    threads = [threading.Thread(target=load, args=(kind,)) for kind in ("plain", "plain", "plain", "stream", "stream")]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    os.killpg(fakes["b"].process.pid, signal.SIGKILL)  # no goodbye: connections reset, then refused
    killed_at.append(time.monotonic())
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join()
    plain_failures = [r for r in results["plain"] if not r[1]]
    assert not plain_failures, plain_failures[:3]
    # Streams already flowing from B when it died break (their head was sent); none started after may fail.
    later_streams = [r for r in results["stream"] if r[0] > killed_at[0]]
    assert later_streams and all(r[1] for r in later_streams), [r for r in later_streams if not r[1]][:3]
    assert len([r for r in results["plain"] if r[0] > killed_at[0]]) > 50
    # Some requests failed over from B (recorded with more than one attempt), and were answered elsewhere.
    time.sleep(0.5)
    failed_over = UsageRecord.objects.filter(attempts__gt=1)
    assert failed_over.exists()
    assert set(failed_over.values_list("upstream", flat=True)) <= {"a", "c"}


def test_a_silent_upstream_is_failed_over_after_the_first_byte_timeout(fakes, routed_gateway, make_key):
    """B accepts every connection and never answers: with UPSTREAM_FIRST_BYTE_TIMEOUT each request B draws waits
    that long, then goes to A, plain and streamed; without it B would hold the request for OPENAI_TIMEOUT."""
    set_mode(fakes["b"], hang=1)
    create("a", fakes["a"], KEY_A)
    create("b", fakes["b"], KEY_B, "--weight", "3")
    gateway = routed_gateway(UPSTREAM_FIRST_BYTE_TIMEOUT="0.5", OPENAI_TIMEOUT="20")
    _, raw = make_key()
    for stream in (False, True, False, True):
        started = time.monotonic()
        response = chat(gateway, raw, stream=stream)
        assert response.status_code == 200, response.text
        assert (not stream) or "data: [DONE]" in response.text
        assert time.monotonic() - started < 5.0  # B's silence cost at most its bound (twice, at worst), not 20 s
    assert v1_requests(fakes["b"])  # B was drawn (weight 3 of 4) and left silent
    time.sleep(0.5)
    records = UsageRecord.objects.filter(status=200)
    assert set(records.values_list("upstream", flat=True)) == {"a"}
    assert records.filter(attempts=2).exists()
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    assert re.search(r'tollgate_upstream_errors_total\{reason="timeout",upstream="b"\} [1-9]', metrics), metrics[-2000:]


def test_an_upstream_answering_429_rests_and_the_others_serve(fakes, routed_gateway, make_key):
    set_mode(fakes["b"], fail_status=429, retry_after=30)
    create("a", fakes["a"], KEY_A)
    create("b", fakes["b"], KEY_B, "--weight", "5")
    gateway = routed_gateway()
    _, raw = make_key()
    statuses = asyncio.run(_many(gateway.url, raw, 100, concurrency=4))
    assert Counter(statuses) == {200: 100}
    # B answered 429 with retry-after: it rests (shared by both workers), so it is asked only a handful of times.
    assert 1 <= len(v1_requests(fakes["b"])) <= 6, len(v1_requests(fakes["b"]))
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    assert re.search(r'tollgate_upstream_resting\{upstream="b"\} 1', metrics), metrics[-2000:]
    assert re.search(r'tollgate_upstream_errors_total\{reason="429",upstream="b"\} [1-9]', metrics)
    # Now A answers 429 too: once both rest, a request gets OpenAI's 503 at once (not a timeout).
    set_mode(fakes["a"], fail_status=429, retry_after=30)
    for _ in range(8):
        response = chat(gateway, raw)
        if response.status_code == 503:
            break
        assert response.status_code == 429  # the last upstream's own 429, passed through
    # With Redis the rests are shared: the very next request is refused at once. Without it each worker learns from
    # its own 429s (per-worker health, as documented), so a request may still meet the other worker's first 429.
    shared = bool(os.environ.get("REDIS_URL"))
    for _ in range(1 if shared else 8):
        started = time.monotonic()
        response = chat(gateway, raw)
        if response.status_code == 503 or shared:
            break
        assert response.status_code == 429
    assert time.monotonic() - started < 1.0
    error = assert_openai_error(response, 503, code="service_unavailable")
    assert "resting" in error["message"]
    # The admin page shows the state and the last errors.
    from upstreams.admin import UpstreamAdmin
    from upstreams.store import get_route_store

    if os.environ.get("REDIS_URL"):
        assert "b" in get_route_store().resting_now(["a", "b"])
        assert get_route_store().last_errors("b")[0]["reason"] == "429"
        assert UpstreamAdmin.state(None, Upstream.objects.get(name="b")).startswith("resting until")


def test_a_failing_upstream_rests_after_repeated_failures(fakes, routed_gateway, make_key):
    set_mode(fakes["b"], fail_status=500)
    create("a", fakes["a"], KEY_A)
    create("b", fakes["b"], KEY_B, "--priority", "1")  # preferred: every request tries it first while it serves
    gateway = routed_gateway(workers=1)
    _, raw = make_key()
    statuses = [chat(gateway, raw).status_code for _ in range(20)]
    assert statuses == [200] * 20
    # Three failures within the window, then it rests for UPSTREAM_COOLDOWN_SECONDS: B saw exactly three.
    assert len(v1_requests(fakes["b"])) == 3


# -- Azure --------------------------------------------------------------------------------------------------------


def test_azure_v1_and_deployment_requests_have_azures_shape(fakes, routed_gateway, make_key):
    create("c", fakes["c"], KEY_C, "--azure", "--alias", "gpt-4o-mini=my-4o-mini-deployment")
    create(
        "d",
        fakes["c"],
        KEY_C,
        "--azure",
        "--api-version",
        "2024-10-21",
        "--alias",
        "small=my-small",
        "--priority",
        "-1",
    )
    gateway = routed_gateway(workers=1)
    _, raw = make_key()
    response = chat(gateway, raw)
    assert response.status_code == 200, response.text
    record = v1_requests(fakes["c"])[-1]
    assert record["path"] == "/openai/v1/chat/completions"
    assert record["headers"]["api-key"] == KEY_C
    assert "authorization" not in record["headers"]
    assert record["json"]["model"] == "my-4o-mini-deployment"  # the alias: the deployment as `model`
    # Deployment-style URLs with ?api-version= (the `small` alias is served only by `d`).
    response = httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers={"Authorization": f"Bearer {raw}"},
        json={"model": "small", "input": "hello"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    record = v1_requests(fakes["c"])[-1]
    assert record["path"] == "/openai/deployments/my-small/embeddings"
    assert record["query"] == "api-version=2024-10-21"
    assert record["headers"]["api-key"] == KEY_C and "authorization" not in record["headers"]
    # Azure's error bodies leave in OpenAI's shape.
    set_mode(fakes["c"], fail_status=400)
    error = assert_openai_error(chat(gateway, raw), 400)
    assert "fail mode" in error["message"] and error["code"] == "400"
    # A model no enabled upstream serves is OpenAI's 404, before any upstream call.
    assert_openai_error(chat(gateway, raw, model="gpt-unknown"), 404, code="model_not_found")


# -- stored objects -----------------------------------------------------------------------------------------------


def test_a_stored_response_is_fetched_through_its_own_upstream_after_a_failover(fakes, routed_gateway, make_key):
    set_mode(fakes["b"], fail_status=502)
    create("a", fakes["a"], KEY_A)
    create("b", fakes["b"], KEY_B, "--priority", "1")  # preferred, but failing: the create fails over to A
    gateway = routed_gateway(workers=1)
    _, raw = make_key()
    client = gateway.client(raw)
    created = client.responses.create(model="gpt-4o-mini", input="remember me")
    deadline = time.monotonic() + 5
    while not UsageRecord.objects.filter(endpoint="responses").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    record = UsageRecord.objects.get(endpoint="responses")
    assert (record.upstream, record.attempts) == ("a", 2)
    # The log line names the upstream and the attempts too; no upstream key is in the log.
    line = next(x for x in gateway.log.splitlines() if f"request_id={record.request_id}" in x)
    assert "upstream=a attempts=2" in line, line
    assert KEY_A not in gateway.log and KEY_B not in gateway.log
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    assert re.search(r'tollgate_upstream_failovers_total\{upstream="b"\} 1\.0', metrics), metrics[-3000:]
    set_mode(fakes["b"])  # B serves again, and is preferred for anything new
    fakes["a"].clear()
    fakes["b"].clear()
    for _ in range(5):
        assert client.responses.retrieve(created.id).id == created.id
    assert client.responses.input_items.list(created.id).data
    follow_up = client.responses.create(model="gpt-4o-mini", input="and now?", previous_response_id=created.id)
    assert follow_up.id
    assert not [r for r in v1_requests(fakes["b"]) if "/responses" in r["path"]]
    assert len([r for r in v1_requests(fakes["a"]) if "/responses" in r["path"]]) == 7
    # New work goes to B again.
    assert chat(gateway, raw).status_code == 200
    assert v1_requests(fakes["b"])


# -- models -------------------------------------------------------------------------------------------------------


def test_models_list_what_enabled_upstreams_serve_within_the_allowlist(fakes, routed_gateway, make_key):
    create("a", fakes["a"], KEY_A, "--models", "gpt-4o-mini,gpt-4o", "--alias", "fast=gpt-4o-mini")
    create("c", fakes["c"], KEY_C, "--azure", "--alias", "azure-4o=my-4o")
    gateway = routed_gateway(workers=1)
    _, raw = make_key()
    _, limited = make_key(name="limited", allowed_models=["fast", "azure-4o", "gpt-unknown"])
    ids = [m.id for m in gateway.client(raw).models.list().data]
    assert ids == sorted(["gpt-4o-mini", "gpt-4o", "fast", "azure-4o"])
    assert [m.id for m in gateway.client(limited).models.list().data] == ["azure-4o", "fast"]
    call_command("disable_upstream", "c")
    time.sleep(0.5)
    assert "azure-4o" not in [m.id for m in gateway.client(raw).models.list().data]
    assert_openai_error(chat(gateway, raw, model="azure-4o"), 404, code="model_not_found")
    call_command("enable_upstream", "c")
    time.sleep(0.5)
    assert "azure-4o" in [m.id for m in gateway.client(raw).models.list().data]


# -- commands and keys at rest ------------------------------------------------------------------------------------


def test_commands_store_keys_encrypted_and_never_print_them(transactional_db, encryption, settings, capsys, tmp_path):
    call_command(
        "create_upstream", "primary", "--kind", "openai", "--base-url", "https://api.openai.com/v1",
        "--api-key", KEY_A, "--models", "gpt-4o,gpt-4o-mini", "--alias", "fast=gpt-4o-mini", "--weight", "3",
        "--priority", "2", "--rpm", "100", "--tpm", "5000",
    )  # fmt: skip
    call_command(
        "create_upstream", "azure-eu", "--kind", "azure", "--base-url", "https://tollgate-eu.openai.azure.com",
        "--api-key", KEY_C, "--api-version", "2024-10-21",
    )  # fmt: skip
    out = capsys.readouterr().out
    assert KEY_A not in out and KEY_C not in out
    # Bad input: non-zero, one line, nothing changed.
    before = (Upstream.objects.count(), UpstreamAuditEntry.objects.count())
    for args in (
        ["primary", "--kind", "openai", "--base-url", "https://x/v1", "--api-key", "k"],  # name taken
        ["other", "--kind", "openai", "--base-url", "ftp://x", "--api-key", "k"],
        ["other", "--kind", "openai", "--base-url", "https://x/v1", "--api-key", "k", "--api-version", "1"],
        ["other", "--kind", "openai", "--base-url", "https://x/v1", "--api-key", "k", "--alias", "nothing"],
        ["other", "--kind", "openai", "--base-url", "https://x/v1", "--api-key", "k", "--weight", "0"],
        ["other", "--kind", "bedrock", "--base-url", "https://x/v1", "--api-key", "k"],
    ):
        with pytest.raises(CommandError) as failure:
            call_command("create_upstream", *args)
        assert "\n" not in str(failure.value)
    with pytest.raises(CommandError):
        call_command("disable_upstream", "nobody")
    assert (Upstream.objects.count(), UpstreamAuditEntry.objects.count()) == before
    call_command("list_upstreams", "--json")
    listed = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in listed] == ["primary", "azure-eu"]
    assert listed[0]["aliases"] == {"fast": "gpt-4o-mini"} and listed[0]["rpm"] == 100
    call_command("list_upstreams")
    call_command("disable_upstream", "azure-eu")
    assert not Upstream.objects.get(name="azure-eu").enabled
    call_command("enable_upstream", "azure-eu")
    out = capsys.readouterr().out
    assert KEY_A not in out and KEY_C not in out
    assert list(UpstreamAuditEntry.objects.order_by("created_at").values_list("action", flat=True)) == [
        "create", "create", "disable", "enable",
    ]  # fmt: skip
    # The raw keys are in no row: neither a Django dump nor PostgreSQL's own dump of the whole database has them.
    dump = tmp_path / "dump.json"
    call_command("dumpdata", output=str(dump))
    text = dump.read_text()
    assert "primary" in text and KEY_A not in text and KEY_C not in text
    if shutil.which("pg_dump") and server_database_url().startswith("postgres"):
        pg = subprocess.run(["pg_dump", server_database_url()], capture_output=True, text=True, check=True).stdout
        assert "azure-eu" in pg and KEY_A not in pg and KEY_C not in pg
    # Re-encryption with a new first key: the old key can then go.
    new_key = Fernet.generate_key().decode()
    sealed = Upstream.objects.get(name="primary").api_key_encrypted
    settings.UPSTREAM_KEY_ENCRYPTION_KEYS = f"{new_key},{ENCRYPTION_KEY}"
    call_command("reencrypt_upstream_keys")
    assert Upstream.objects.get(name="primary").api_key_encrypted != sealed
    settings.UPSTREAM_KEY_ENCRYPTION_KEYS = new_key
    from upstreams.crypto import unseal

    assert unseal(Upstream.objects.get(name="primary").api_key_encrypted) == KEY_A


def test_a_price_row_may_be_limited_to_one_upstream(fakes, routed_gateway, make_key):
    from decimal import Decimal

    from usage.services import model_price_create

    model_price_create(actor="test", model="gpt-4o-mini", input_per_million=Decimal(1), output_per_million=Decimal(2))
    model_price_create(
        actor="test", model="gpt-4o-mini", input_per_million=Decimal(0), output_per_million=Decimal(0), upstream="b"
    )
    create("a", fakes["a"], KEY_A)
    create("b", fakes["b"], KEY_B)
    gateway = routed_gateway(workers=1)
    _, raw = make_key()
    assert Counter(asyncio.run(_many(gateway.url, raw, 40, concurrency=4))) == {200: 40}
    deadline = time.monotonic() + 10
    while UsageRecord.objects.count() < 40 and time.monotonic() < deadline:
        time.sleep(0.1)
    costs: dict[str, set] = {}
    for upstream, cost in UsageRecord.objects.values_list("upstream", "cost_usd"):
        costs.setdefault(upstream, set()).add(cost > 0)
    assert costs == {"a": {True}, "b": {False}}


def test_the_admin_creates_upstreams_through_the_services_and_never_shows_a_key(admin_client, encryption):
    response = admin_client.post(
        "/admin/upstreams/upstream/add/",
        {
            "name": "eu",
            "kind": "azure",
            "base_url": "https://tollgate-eu.openai.azure.com",
            "api_key": KEY_C,
            "organization": "",
            "project": "",
            "api_version": "2024-10-21",
            "weight": "2",
            "priority": "0",
            "models": "[]",
            "aliases": '{"gpt-4o-mini": "eu-4o-mini"}',
            "rpm": "",
            "tpm": "",
            "enabled": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    upstream = Upstream.objects.get(name="eu")
    assert upstream.aliases == {"gpt-4o-mini": "eu-4o-mini"} and KEY_C not in upstream.api_key_encrypted
    entry = UpstreamAuditEntry.objects.get(upstream_name="eu")
    assert (entry.action, entry.actor) == ("create", "admin")
    listing = admin_client.get("/admin/upstreams/upstream/").content.decode()
    assert "serving" in listing and KEY_C not in listing
    page = admin_client.get(f"/admin/upstreams/upstream/{upstream.pk}/change/").content.decode()
    assert KEY_C not in page and "last errors" in page.lower()
    # An edit without a key keeps the key; a bad value is refused by the form, nothing changed.
    sealed = upstream.api_key_encrypted
    response = admin_client.post(
        f"/admin/upstreams/upstream/{upstream.pk}/change/",
        {
            "kind": "openai", "base_url": "https://api.openai.com/v1", "api_key": "", "organization": "",
            "project": "", "api_version": "2024-10-21", "weight": "2", "priority": "0", "models": "[]",
            "aliases": "{}", "rpm": "", "tpm": "", "enabled": "on",
        },
    )  # fmt: skip
    assert response.status_code == 200 and "azure upstreams only" in response.content.decode()
    assert Upstream.objects.get(name="eu").kind == "azure"
    response = admin_client.post(
        f"/admin/upstreams/upstream/{upstream.pk}/change/",
        {
            "kind": "azure", "base_url": "https://tollgate-eu.openai.azure.com", "api_key": "", "organization": "",
            "project": "", "api_version": "2024-10-21", "weight": "5", "priority": "0", "models": "[]",
            "aliases": '{"gpt-4o-mini": "eu-4o-mini"}', "rpm": "", "tpm": "", "enabled": "on",
        },
    )  # fmt: skip
    assert response.status_code == 302
    saved = Upstream.objects.get(name="eu")
    assert (saved.weight, saved.api_key_encrypted) == (5, sealed)
    assert UpstreamAuditEntry.objects.filter(upstream_name="eu", action="update").get().changes == {"weight": [2, 5]}


def test_an_upstream_at_its_requests_per_minute_is_passed_over_exactly(fakes, routed_gateway, make_key):
    create("a", fakes["a"], KEY_A, "--priority", "1", "--rpm", "7")  # preferred until its 7 requests a minute
    create("b", fakes["b"], KEY_B, "--tpm", "400")
    gateway = routed_gateway()
    _, raw = make_key()
    assert Counter(asyncio.run(_many(gateway.url, raw, 30, concurrency=6))) == {200: 30}
    seen_a = len(v1_requests(fakes["a"]))
    # Counted in Redis, the cap is exact across both workers; per worker without Redis.
    assert seen_a == 7 if os.environ.get("REDIS_URL") else 7 <= seen_a <= 14
    assert len(v1_requests(fakes["b"])) == 30 - seen_a
    # B's tokens per minute: each request reserves its input and max_tokens; past 400, nobody can serve.
    statuses = [chat(gateway, raw, max_tokens=100).status_code for _ in range(8)]
    assert 503 in statuses and set(statuses) <= {200, 503}, statuses
    if os.environ.get("REDIS_URL"):  # shared: every worker now refuses
        assert_openai_error(chat(gateway, raw, max_tokens=100), 503, code="service_unavailable")
