"""Event-loop lag: each worker's histogram on /metrics, and a warning logged when one stall passes the threshold.

The stall is a real one: a prompt of many long messages is tokenized on the event loop (completions/tokens.py
bounds each text, not their number), which holds the worker's loop for well over the threshold set here.
"""

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import worker_pids

MODEL = "gpt-4o-mini"
THRESHOLD_MS = 30


def lag_samples(gateway) -> dict:
    """{(sample name, worker, le): value} of tollgate_event_loop_lag_seconds."""
    response = httpx.get(f"{gateway.url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        if family.name != "tollgate_event_loop_lag_seconds":
            continue
        for sample in family.samples:
            samples[sample.name, sample.labels["worker"], sample.labels.get("le")] = sample.value
    return samples


def stalled_count(samples: dict, worker: str) -> float:
    """Samples of `worker` over THRESHOLD_MS: its total count minus those in the buckets up to 25 ms."""
    return (
        samples[("tollgate_event_loop_lag_seconds_count", worker, None)]
        - samples[("tollgate_event_loop_lag_seconds_bucket", worker, "0.025")]
    )


def test_each_worker_reports_its_loop_lag_and_a_stall_is_logged(start_gateway, make_key):
    gateway = start_gateway(name="looplag", workers=2, env={"LOOP_LAG_WARNING_MS": str(THRESHOLD_MS)})
    workers = {str(pid) for pid in worker_pids(gateway, 2)}
    _, raw = make_key(name="looplag")

    # Idle workers sample their loop 20 times a second: both have counts, neither reports a stall yet.
    deadline = time.monotonic() + 10
    samples = lag_samples(gateway)
    while time.monotonic() < deadline and not all(
        samples.get(("tollgate_event_loop_lag_seconds_count", worker, None), 0) >= 5 for worker in workers
    ):
        time.sleep(0.2)
        samples = lag_samples(gateway)
    for worker in workers:
        assert samples[("tollgate_event_loop_lag_seconds_count", worker, None)] >= 5
        assert ("tollgate_event_loop_lag_seconds_bucket", worker, "+Inf") in samples
    assert {worker for (_, worker, _) in samples} == workers
    log_before = len(gateway.log)
    stalled_before = {worker: stalled_count(samples, worker) for worker in workers}

    # 150 messages of 19,000 characters each: every one is tokenized, on the loop of the worker that gets it.
    messages = [{"role": "user", "content": "lorem ipsum dolor sit amet " * 700}] * 150
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {raw}"},
        json={"model": MODEL, "messages": messages, "max_tokens": 5},
        timeout=120,
    )
    assert response.status_code in (200, 400, 429), response.text

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "event loop was blocked" not in gateway.log[log_before:]:
        time.sleep(0.1)
    warnings = [line for line in gateway.log[log_before:].splitlines() if "event loop was blocked" in line]
    assert warnings, gateway.log[-3000:]
    assert f"LOOP_LAG_WARNING_MS={THRESHOLD_MS}" in warnings[0]
    assert "tollgate.looplag" in warnings[0]

    # The stall is in the histogram of the worker that served the request, over the threshold.
    samples = lag_samples(gateway)
    stalled_after = {worker: stalled_count(samples, worker) for worker in workers}
    assert any(stalled_after[worker] > stalled_before[worker] for worker in workers), (stalled_before, samples)
