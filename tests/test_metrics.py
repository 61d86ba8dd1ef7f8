"""GET /metrics after real traffic: counts summed over several gunicorn workers, exact to the request."""

import os
import secrets
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.metrics import MAX_MODEL_LABELS

MODEL = "gpt-4o-mini"


def scrape(gateway, token: str | None = None) -> dict:
    """{(sample name, frozenset of label pairs): value} from the gateway's /metrics."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{gateway.url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape_until(gateway, condition, timeout: float = 10, token: str | None = None) -> dict:
    deadline = time.monotonic() + timeout
    samples = scrape(gateway, token)
    while not condition(samples) and time.monotonic() < deadline:
        time.sleep(0.05)
        samples = scrape(gateway, token)
    return samples


# The metrics labelled by endpoint; a test that names none means chat (a 401 has no endpoint).
ENDPOINT_LABELLED = ("tollgate_requests", "tollgate_upstream_", "tollgate_prompt_", "tollgate_completion_")


def value(samples: dict, name: str, **labels) -> float:
    if name.startswith(ENDPOINT_LABELLED) and "endpoint" not in labels:
        labels["endpoint"] = "" if labels.get("status") == "401" else "chat.completions"
    return samples.get((name, frozenset(labels.items())), 0.0)


def chat(client, content: str, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kwargs)


def test_metrics_are_summed_across_workers(start_gateway, make_key):
    token = secrets.token_urlsafe(24)
    gateway = start_gateway(name="metrics", workers=3, env={"METRICS_PER_KEY": "true", "METRICS_TOKEN": token})
    key, raw = make_key(name="metrics", allowed_models=[MODEL])
    other, other_raw = make_key(name="metrics-other")
    label = {"key": key.prefix}

    def plain(i):
        # A new connection each time, so that the kernel spreads requests over the three workers.
        with gateway.client(raw, http_client=httpx.Client()) as client:
            usage = chat(client, f"plain request number {i}").usage
        return usage.prompt_tokens, usage.completion_tokens

    def streamed(i):
        with gateway.client(raw, http_client=httpx.Client()) as client:
            chunks = list(chat(client, f"streamed {i}", stream=True, stream_options={"include_usage": True}))
        usage = chunks[-1].usage
        return usage.prompt_tokens, usage.completion_tokens

    with ThreadPoolExecutor(8) as pool:
        usages = list(pool.map(plain, range(24))) + list(pool.map(streamed, range(6)))
    prompt_total = sum(p for p, _ in usages)
    completion_total = sum(c for _, c in usages)

    with gateway.client(raw) as client:
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "not allowed"}])
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, messages=[], temperature=1)
    for bad in ("nope.not-a-key", f"{key.prefix}.wrongsecretwrongsecretwrongsecret"):
        with gateway.client(bad) as client, pytest.raises(openai.AuthenticationError):
            chat(client, "hi")
    with gateway.client(other_raw) as client:
        chat(client, "another key")

    # Every worker writes its own files; /metrics must add them up. The kernel usually spreads new connections
    # over the workers, but one busy worker may take them all: a third key keeps asking (slow requests, 16 at a
    # time, at most 20 rounds) until a second worker has served one, so the sum below really adds up files.
    multiproc_dir = Path(tempfile.gettempdir()) / f"tollgate-prometheus-{gateway.process.pid}"

    def writers():
        return {path.stem.rsplit("_", 1)[-1] for path in multiproc_dir.glob("counter_*.db")}

    _, spreader_raw = make_key(name="metrics-spreader")

    def spread(i):
        with gateway.client(spreader_raw, http_client=httpx.Client()) as client:
            chat(client, f"spread {i}", extra_body={"fake": {"delay_ms": 100}})

    for _ in range(20):
        if len(writers()) >= 2:
            break
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(spread, range(16)))
    assert len(writers()) >= 2, f"requests were not spread over workers: {writers()}"

    assert httpx.get(f"{gateway.url}/metrics", timeout=10).status_code == 401
    assert httpx.get(f"{gateway.url}/metrics", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    samples = scrape_until(
        gateway, lambda s: value(s, "tollgate_requests_total", model=MODEL, status="200", **label) >= 30, token=token
    )

    assert value(samples, "tollgate_requests_total", model=MODEL, status="200", **label) == 30
    assert value(samples, "tollgate_requests_total", model="gpt-4o", status="404", **label) == 1
    # An invalid body is refused before its model is known.
    assert value(samples, "tollgate_requests_total", model="", status="400", **label) == 1
    assert value(samples, "tollgate_requests_total", model="", status="401", key="") == 2
    assert value(samples, "tollgate_requests_total", model=MODEL, status="200", key=other.prefix) == 1
    assert value(samples, "tollgate_prompt_tokens_total", model=MODEL, **label) == prompt_total
    assert value(samples, "tollgate_completion_tokens_total", model=MODEL, **label) == completion_total
    assert value(samples, "tollgate_upstream_latency_seconds_count", model=MODEL, **label) == 30
    assert value(samples, "tollgate_upstream_ttfb_seconds_count", model=MODEL, **label) == 30
    assert value(samples, "tollgate_upstream_latency_seconds_bucket", model=MODEL, le="+Inf", **label) == 30
    assert 0 < value(samples, "tollgate_upstream_latency_seconds_sum", model=MODEL, **label) < 30 * 60
    assert value(samples, "tollgate_rejections_total", reason="auth", key="") == 2
    assert value(samples, "tollgate_rejections_total", reason="model_not_allowed", **label) == 1
    assert value(samples, "tollgate_rejections_total", reason="invalid_request", **label) == 1
    assert value(samples, "tollgate_streams_in_flight") == 0
    # Labels carry the key's public prefix, never the key.
    text = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10).text
    assert raw not in text and raw.split(".", 1)[1] not in text

    gateway.stop()
    assert not multiproc_dir.exists(), "the arbiter removes the directory it created"


def test_streams_in_flight_gauge(gateway, api_key):
    _, raw = api_key
    before = value(scrape(gateway), "tollgate_streams_in_flight")
    started = threading.Event()
    finished = threading.Event()

    def slow_stream():
        with gateway.client(raw) as client:
            stream = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "one two three four"}],
                stream=True,
                extra_body={"fake": {"chunk_delay_ms": 400}},
            )
            for _ in stream:
                started.set()
        finished.set()

    thread = threading.Thread(target=slow_stream)
    thread.start()
    try:
        assert started.wait(20)
        assert value(scrape(gateway), "tollgate_streams_in_flight") == before + 1
    finally:
        thread.join(30)
    assert finished.is_set()
    deadline = time.monotonic() + 10
    while value(scrape(gateway), "tollgate_streams_in_flight") != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert value(scrape(gateway), "tollgate_streams_in_flight") == before


def test_metrics_are_open_and_per_key_labels_off_by_default(gateway, client, api_key):
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "count me"}])
    samples = scrape(gateway)  # no METRICS_TOKEN: no header needed
    requests = {labels: v for (name, labels), v in samples.items() if name == "tollgate_requests_total"}
    assert requests and all(dict(labels).keys() == {"endpoint", "model", "status"} for labels in requests)
    assert value(samples, "tollgate_requests_total", model=MODEL, status="200") >= 1
    assert api_key[0].prefix not in httpx.get(f"{gateway.url}/metrics", timeout=10).text


def test_an_operator_chosen_multiprocess_dir_is_emptied_at_start(start_gateway, make_key, tmp_path):
    """PROMETHEUS_MULTIPROC_DIR set by the operator: files left by a previous run must not count again."""
    stale = tmp_path / "counter_999999.db"
    stale.write_bytes(b"left over from a previous run")
    gateway = start_gateway(name="metrics-dir", workers=1, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert not stale.exists()
    _, raw = make_key(name="metrics-dir")
    with gateway.client(raw) as client:
        chat(client, "one")
    assert value(scrape(gateway), "tollgate_requests_total", model=MODEL, status="200") == 1
    assert any(tmp_path.glob("counter_*.db"))
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None  # the test process itself is untouched


def test_rejections_by_limit_kind_and_budget(start_gateway, make_key, transactional_db):
    """The limiter's and the budget's refusals are counted under their own reasons; model labels stay bounded."""
    from datetime import timedelta
    from decimal import Decimal

    from django.utils import timezone

    from usage.models import ModelPrice

    model = f"metrics-priced-{secrets.token_hex(4)}"
    ModelPrice.objects.create(
        model=model,
        input_per_million=Decimal(1000),
        output_per_million=Decimal(1000),
        max_output_tokens=200,
        effective_from=timezone.now() - timedelta(days=1),
    )
    gateway = start_gateway(name="metrics-limits", workers=1)
    _, rpm_raw = make_key(name="metrics-rpm", rpm=1)
    _, tpm_raw = make_key(name="metrics-tpm", tpm=100)
    _, concurrency_raw = make_key(name="metrics-concurrency", max_concurrent=1)
    _, budget_raw = make_key(name="metrics-budget", budget_usd=Decimal("0.001"), budget_period="day")
    _, allowlisted_raw = make_key(name="metrics-allowlist", allowed_models=[MODEL])

    with gateway.client(rpm_raw) as client:
        chat(client, "first")
        with pytest.raises(openai.RateLimitError):
            chat(client, "second")
    with gateway.client(tpm_raw) as client, pytest.raises(openai.RateLimitError):
        chat(client, "too many tokens", max_tokens=1000)
    with gateway.client(budget_raw) as client, pytest.raises(openai.RateLimitError) as spent:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "costly"}], max_tokens=100)
    assert spent.value.code == "insufficient_quota"

    started = threading.Event()

    def hold_a_slot():
        with gateway.client(concurrency_raw) as client:
            for _ in chat(client, "one two three", stream=True, extra_body={"fake": {"chunk_delay_ms": 300}}):
                started.set()

    holder = threading.Thread(target=hold_a_slot)
    holder.start()
    try:
        assert started.wait(20)
        with gateway.client(concurrency_raw) as client, pytest.raises(openai.RateLimitError):
            chat(client, "while the other is streaming")
    finally:
        holder.join(30)

    # Made-up model names: each worker labels a bounded number of names the upstream never served.
    junk = [f"made-up-{i}" for i in range(MAX_MODEL_LABELS + 20)]
    with gateway.client(allowlisted_raw) as client:
        for name in junk:
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model=name, messages=[{"role": "user", "content": "x"}])

    # A stream is reported when its generator ends, just after the client has read its last event.
    samples = scrape_until(gateway, lambda s: value(s, "tollgate_requests_total", model=MODEL, status="200") >= 2)
    for reason in ("rate_limit_requests", "rate_limit_tokens", "rate_limit_concurrency", "budget"):
        assert value(samples, "tollgate_rejections_total", reason=reason) == 1, reason
    assert value(samples, "tollgate_requests_total", model=MODEL, status="429") == 3
    assert value(samples, "tollgate_requests_total", model=model, status="429") == 1
    assert value(samples, "tollgate_requests_total", model=MODEL, status="200") == 2
    labelled = sum(value(samples, "tollgate_requests_total", model=name, status="404") for name in junk)
    assert labelled == MAX_MODEL_LABELS - 1  # the priced model took one unconfirmed label
    assert value(samples, "tollgate_requests_total", model="other", status="404") == len(junk) - labelled
    assert value(samples, "tollgate_rejections_total", reason="model_not_allowed") == len(junk)
