"""Usage records: one per authenticated request, exact against the upstream, written off the hot path, kept
through database outages and flushed on a clean shutdown."""

import asyncio
import io
import json
import logging
import statistics
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import openai
import pytest
from django.core.management import call_command
from django.db import connection

from apikeys.keycache import KeySnapshot
from apikeys.models import APIKey, KeyGeneration
from completions.relay import RelayStream
from core.outcome import RequestOutcome
from fakeupstream.completions import parse_chat_request as fake_parse
from usage.models import UsageRecord
from usage.writer import UsageWriter, capture


def wait_for_records(count: int, timeout: float = 20.0, **filters) -> list[UsageRecord]:
    """The records matching `filters` once there are `count` of them (fails after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(UsageRecord.objects.filter(**filters))
        if len(records) >= count or time.monotonic() > deadline:
            assert len(records) == count, f"expected {count} usage records, found {len(records)}"
            return records
        time.sleep(0.1)


def key_generation() -> int:
    return KeyGeneration.objects.filter(pk=1).values_list("value", flat=True).first() or 0


def fake_usage(body: dict) -> dict:
    """What the fake upstream reports for `body` (its usage is deterministic)."""
    return fake_parse(json.dumps(body).encode()).usage


# -- the exactness run, against a live gateway ---------------------------------------------------------------------


class MixedRun:
    """Sends requests of every kind and remembers, per request id, what the upstream reported for it."""

    def __init__(self, gateway, fake_upstream):
        self.gateway = gateway
        self.fake = fake_upstream
        self.expected = {}  # our request id -> dict(key, model, status, prompt, completion, estimated, marker, ...)

    def body(self, model, text, **extra):
        # Short and cheap to tokenize ("n" is no hex digit, so no other test's uuid can contain it).
        marker = f"n{uuid.uuid4().int % 10**6:06d}"
        return marker, {"model": model, "messages": [{"role": "user", "content": f"{text} {marker}"}], **extra}

    def note(
        self, request_id, raw_key, body, marker, *, status, reported, estimated=False, received_chunks=0, model=None
    ):
        assert request_id and request_id not in self.expected
        self.expected[request_id] = {
            "prefix": raw_key.split(".")[0],
            "model": body["model"] if model is None else model,
            "status": status,
            "prompt": reported["prompt_tokens"] if reported else 0,
            "completion": reported["completion_tokens"] if reported else 0,
            "estimated": estimated,
            "marker": marker,
            "received_chunks": received_chunks,
            "body": body,
        }

    def plain(self, raw_key, model="gpt-4o-mini", text="hello there"):
        marker, body = self.body(model, text)
        raw = self.gateway.client(raw_key).chat.completions.with_raw_response.create(**body)
        completion = raw.parse()
        reported = completion.usage.model_dump()
        assert reported["prompt_tokens"] == fake_usage(body)["prompt_tokens"]
        self.note(raw.headers["x-request-id"], raw_key, body, marker, status=200, reported=reported)

    def streamed(self, raw_key, *, include_usage, model="gpt-4o-mini", text="a streamed answer please"):
        extra = {"stream_options": {"include_usage": True}} if include_usage else {}
        marker, body = self.body(model, text, stream=True, **extra)
        raw = self.gateway.client(raw_key).chat.completions.with_raw_response.create(**body)
        chunks = list(raw.parse())
        usage_chunks = [c for c in chunks if c.usage is not None]
        if include_usage:
            assert len(usage_chunks) == 1 and usage_chunks[0].usage.model_dump()["completion_tokens"] > 0
            reported = usage_chunks[0].usage.model_dump()
        else:
            assert usage_chunks == []  # hidden from a client that did not ask
            reported = fake_usage(body)
        self.note(raw.headers["x-request-id"], raw_key, body, marker, status=200, reported=reported)

    def failing(self, raw_key, *, stream=False, **fake):
        marker, body = self.body("gpt-4o-mini", "this one fails", stream=stream)
        with pytest.raises(openai.APIStatusError) as caught:
            self.gateway.client(raw_key).chat.completions.create(**body, extra_body={"fake": fake})
        self.note(caught.value.request_id, raw_key, body, marker, status=caught.value.status_code, reported=None)
        return caught.value

    def invalid(self, raw_key):
        marker, body = self.body("gpt-4o-mini", "too hot", temperature=5)
        with pytest.raises(openai.BadRequestError) as caught:
            self.gateway.client(raw_key).chat.completions.create(**body)
        # A body that fails validation has no validated model: its record's model is empty.
        self.note(caught.value.request_id, raw_key, body, marker, status=400, reported=None, model="")

    def not_allowed(self, raw_key, model):
        marker, body = self.body(model, "not for this key")
        with pytest.raises(openai.NotFoundError) as caught:
            self.gateway.client(raw_key).chat.completions.create(**body)
        self.note(caught.value.request_id, raw_key, body, marker, status=404, reported=None)

    def cut_mid_stream(self, raw_key):
        """The upstream breaks off after 3 chunks: the client gets an error event; usage is estimated."""
        marker, body = self.body("gpt-4o-mini", "cut me", stream=True)
        raw = self.gateway.client(raw_key).chat.completions.with_raw_response.create(
            **body, extra_body={"fake": {"chunks": 10, "cut_after_chunks": 3}}
        )
        received = 0
        with pytest.raises(openai.APIError):
            for chunk in raw.parse():
                received += bool(chunk.choices and chunk.choices[0].delta.content)
        self.note(
            raw.headers["x-request-id"], raw_key, body, marker, status=None, reported=None, estimated=True,
            received_chunks=received,
        )  # fmt: skip

    def disconnect(self, raw_key, after_chunks=4):
        """The client reads a few chunks of a slow stream, then goes away."""
        marker, body = self.body("gpt-4o-mini", "long story", stream=True)
        raw = self.gateway.client(raw_key).chat.completions.with_raw_response.create(
            **body, extra_body={"fake": {"chunks": 50, "chunk_delay_ms": 50}}
        )
        stream = raw.parse()
        received = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
                if received == after_chunks:
                    break
        stream.close()
        self.note(
            raw.headers["x-request-id"], raw_key, body, marker, status=None, reported=None, estimated=True,
            received_chunks=received,
        )  # fmt: skip

    def throttled_burst(self, raw_key, count):
        statuses = []
        for _ in range(count):
            marker, body = self.body("gpt-4o-mini", "burst")
            try:
                raw = self.gateway.client(raw_key).chat.completions.with_raw_response.create(**body)
            except openai.RateLimitError as exc:
                self.note(exc.request_id, raw_key, body, marker, status=429, reported=None)
                statuses.append(429)
            else:
                reported = raw.parse().usage.model_dump()
                self.note(raw.headers["x-request-id"], raw_key, body, marker, status=200, reported=reported)
                statuses.append(200)
        return statuses


def test_mixed_run_usage_report_equals_what_the_upstream_reported(start_gateway, fake_upstream, make_key):
    # Its own gateway, with a price for models no ModelPrice row matches (a flushed test database has none).
    gateway = start_gateway(
        name="usage-mixed",
        env={"PRICE_FALLBACK_INPUT_PER_MILLION": "1.5", "PRICE_FALLBACK_OUTPUT_PER_MILLION": "6"},
    )
    main_key, main_raw = make_key(name="mixed-main")
    throttled_key, throttled_raw = make_key(name="mixed-throttled", rpm=2)
    limited_key, limited_raw = make_key(name="mixed-limited", allowed_models=["gpt-4o-mini"])
    generation_before = key_generation()
    run = MixedRun(gateway, fake_upstream)

    run.plain(main_raw)
    run.plain(main_raw, text="a somewhat longer question with more words in it")
    run.plain(main_raw, model="gpt-4o", text="another model")
    run.streamed(main_raw, include_usage=False)
    run.streamed(main_raw, include_usage=False, model="gpt-4o", text="one two three four five six")
    run.streamed(main_raw, include_usage=True)
    run.streamed(main_raw, include_usage=True, text="seven eight nine")
    upstream_failure = run.failing(main_raw, status=500)
    assert upstream_failure.status_code >= 500
    run.failing(main_raw, stream=True, status=500)
    run.invalid(main_raw)
    run.not_allowed(limited_raw, "gpt-4o")
    run.plain(limited_raw)
    run.cut_mid_stream(main_raw)
    run.disconnect(main_raw)
    run.disconnect(main_raw, after_chunks=7)
    statuses = run.throttled_burst(throttled_raw, 4)

    records = {
        r.request_id: r
        for r in wait_for_records(
            len(run.expected), key_prefix__in=[main_key.prefix, throttled_key.prefix, limited_key.prefix]
        )
    }
    # None missing, none doubled: exactly one record per request we made, under our request id.
    assert set(records) == set(run.expected)

    upstream_by_marker = {}
    for upstream in fake_upstream.requests():
        for expectation in run.expected.values():
            if expectation["marker"] in upstream["body"]:
                upstream_by_marker.setdefault(expectation["marker"], []).append(upstream)

    for request_id, want in run.expected.items():
        record = records[request_id]
        assert record.model == want["model"]
        assert record.key_prefix == want["prefix"]
        assert record.streamed == bool(want["body"].get("stream"))
        assert record.total_tokens == record.prompt_tokens + record.completion_tokens
        assert record.latency_ms > 0
        if want["status"] is not None:
            assert record.status == want["status"], (request_id, record.status, record.error_type)
        if want["status"] == 200:
            assert (record.prompt_tokens, record.completion_tokens) == (want["prompt"], want["completion"])
            assert not record.usage_estimated and record.error_type == ""
            assert record.upstream_request_id.startswith("req_fake_")
            assert record.ttfb_ms is not None and 0 < record.ttfb_ms <= record.latency_ms
        elif want["estimated"]:
            # Cut short: the upstream never reported usage, so the record carries a flagged estimate.
            assert record.usage_estimated
            upstream = upstream_by_marker[want["marker"]][0]
            assert upstream["stream"] and not upstream["completed"]
            # At least what the client saw, at most what the upstream produced.
            assert want["received_chunks"] <= record.completion_tokens <= upstream["chunks_sent"], (
                record.completion_tokens, want["received_chunks"], upstream["chunks_sent"],
            )  # fmt: skip
            # The prompt estimate (tiktoken, plus 3 for the reply's priming) against the fake's count (a token per
            # word, + 3 per message): never less, and within a factor of two (the marker is a few tokens).
            fake_prompt = fake_usage(want["body"])["prompt_tokens"]
            assert fake_prompt <= record.prompt_tokens <= 2 * fake_prompt + 3, (record.prompt_tokens, fake_prompt)
            want["prompt"], want["completion"] = record.prompt_tokens, record.completion_tokens
        else:
            assert record.status >= 400 and record.error_type
            assert (record.prompt_tokens, record.completion_tokens) == (0, 0)

    # Streams are charged like plain requests (LiteLLM logged 83% of streamed requests at $0): every record with
    # tokens has a cost, estimated ones included.
    charged = [r for r in records.values() if r.total_tokens]
    assert any(r.streamed for r in charged) and any(r.usage_estimated for r in charged)
    assert all(r.cost_usd > 0 for r in charged), [(r.model, r.streamed, r.cost_usd) for r in charged]

    disconnected = [
        records[rid] for rid, want in run.expected.items() if want["received_chunks"] and want["status"] is None
    ]
    assert {r.error_type for r in disconnected} >= {"client_disconnected"}

    # usage_report totals equal the per-request expectations, summed per key and model.
    out = io.StringIO()
    call_command("usage_report", "--format", "json", stdout=out)
    report = {
        (row["key_prefix"], row["model"]): row
        for row in json.loads(out.getvalue())
        if row["key_prefix"] in (main_key.prefix, throttled_key.prefix, limited_key.prefix)
    }
    expected_totals = defaultdict(lambda: {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
    for want in run.expected.values():
        total = expected_totals[(want["prefix"], want["model"])]
        total["requests"] += 1
        total["prompt_tokens"] += want["prompt"]
        total["completion_tokens"] += want["completion"]
    assert {
        k: {n: row[n] for n in ("requests", "prompt_tokens", "completion_tokens")} for k, row in report.items()
    } == {k: dict(v) for k, v in expected_totals.items()}
    for (prefix, model), row in report.items():
        cost = sum((r.cost_usd for r in records.values() if (r.key_prefix, r.model) == (prefix, model)), Decimal(0))
        assert Decimal(row["cost_usd"]) == cost
        names = {main_key.prefix: "mixed-main", throttled_key.prefix: "mixed-throttled"}
        assert row["key_name"] == names.get(prefix, "mixed-limited")

    print(
        "\nmixed run:",
        json.dumps(sorted(report.values(), key=lambda r: (r["key_name"], r["model"])), indent=1),
        "statuses of the rpm=2 burst:", statuses,
    )  # fmt: skip

    # last_used_at moved, with QuerySet.update: no post_save, so no KeyGeneration bump (key caches stay warm).
    main_key.refresh_from_db()
    assert main_key.last_used_at is not None
    assert key_generation() == generation_before

    # Throttling: the key allows 2 requests a minute, so a burst of 4 has 429s, each with its record above.
    assert statuses[:2] == [200, 200]
    assert statuses[2:] == [429, 429], f"rpm=2 not enforced (rate limits not in yet?): {statuses}"


def test_every_stream_read_to_the_end_is_recorded_as_complete(gateway, make_key):
    """The SDK closes its connection as soon as it has read `[DONE]`, which races the end of the gateway's relay:
    each stream must still be recorded at once, as a complete request with the upstream's usage."""
    api_key, raw = make_key(name="streams-to-the-end", budget_usd=Decimal("25"))
    client = gateway.client(raw)
    ids = []
    for i in range(20):
        response = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"to the end {i}"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices).endswith(f"end {i}")
        ids.append(response.headers["x-request-id"])
    records = wait_for_records(len(ids), timeout=10, key_prefix=api_key.prefix)
    assert {r.request_id for r in records} == set(ids)
    for record in records:
        assert (record.status, record.error_type, record.usage_estimated) == (200, "", False), record.request_id
        assert (record.prompt_tokens, record.completion_tokens) == (7, 5)  # the fake: 4 words + 3; 5 pieces


async def test_a_relay_closed_by_django_always_runs_its_accounting():
    """`RelayStream.close()` (Django calls it when the response closes) finishes a relay left suspended, whether
    it stopped after its head or mid-stream; a relay that ran to its end is left alone."""
    events = []

    async def relay():
        try:
            yield "head"
            yield b"data: 1\n\n"
            yield b"data: 2\n\n"
        finally:
            events.append("relay finished")

    suspended = relay()
    assert await suspended.__anext__() == "head"
    stream = RelayStream(suspended)
    assert await stream.__anext__() == b"data: 1\n\n"
    stream.close()
    head_only = relay()
    assert await head_only.__anext__() == "head"
    RelayStream(head_only).close()
    complete = relay()
    await complete.__anext__()
    stream = RelayStream(complete)
    assert [chunk async for chunk in stream] == [b"data: 1\n\n", b"data: 2\n\n"]
    stream.close()
    await asyncio.sleep(0.01)
    assert events == ["relay finished"] * 3


# -- clean shutdown ---------------------------------------------------------------------------------------------


def test_records_buffered_at_sigterm_are_flushed(start_gateway, make_key, fake_upstream):
    """A flush interval longer than the test: every record is still in memory when SIGTERM arrives."""
    api_key, raw = make_key(name="sigterm")
    server = start_gateway(name="usage-sigterm", env={"USAGE_FLUSH_SECONDS": "3600"})
    client = server.client(raw)
    count = 40

    def one(i):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"n {i}"}])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))
    # One stream still running when SIGTERM arrives: the graceful shutdown lets it end, and it is counted too.
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "slow"}],
        stream=True,
        extra_body={"fake": {"chunks": 8, "chunk_delay_ms": 100}},
    )
    first = next(iter(stream))
    assert first is not None
    assert UsageRecord.objects.filter(key_prefix=api_key.prefix).count() == 0  # nothing written yet
    reader = threading.Thread(target=lambda: list(stream))
    reader.start()
    returncode = server.stop(timeout=30)
    reader.join(10)
    assert returncode == 0, server.log[-3000:]
    records = wait_for_records(count + 1, timeout=5, key_prefix=api_key.prefix)
    assert len({r.request_id for r in records}) == count + 1
    assert sum(r.streamed for r in records) == 1
    assert "not written" not in server.log


# -- the writer itself (in-process, against the test database) -------------------------------------------------


@pytest.fixture
def snapshot(make_key):
    api_key, _ = make_key(name="writer-key")
    return api_key, KeySnapshot.from_model(api_key)


@pytest.fixture
def writer():
    writers = []

    def make(**kwargs):
        kwargs.setdefault("flush_seconds", 0.05)
        w = UsageWriter(**kwargs)
        w.retry_initial = 0.05
        w.retry_max = 0.2
        writers.append(w)
        return w

    yield make
    for w in writers:
        w.shutdown_retry_seconds = 1
        w.stop(timeout=10)


def outcome_for(snapshot, **fields) -> RequestOutcome:
    outcome = RequestOutcome(request_id=f"req_{uuid.uuid4().hex}", key=snapshot)
    outcome.model = "gpt-4o-mini"
    outcome.prompt_tokens, outcome.completion_tokens = 11, 7
    for name, value in fields.items():
        setattr(outcome, name, value)
    return outcome


def rename_usage_table(to: str, back: bool = False) -> None:
    table = UsageRecord._meta.db_table
    old, new = (to, table) if back else (table, to)
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {connection.ops.quote_name(old)} RENAME TO {connection.ops.quote_name(new)}")


def test_writer_fields_duplicates_and_oversized_values(transactional_db, snapshot, writer):
    api_key, snap = snapshot
    w = writer()
    outcome = outcome_for(snap, model="m" * 300, error_type="e" * 80, upstream_request_id="u" * 300, status=200)
    outcome.cost_usd = Decimal("0.000123456789")
    outcome.ttfb_ms = 12.5
    w.record(outcome)
    w.record(outcome)  # reported twice by mistake: still one record
    [record] = wait_for_records(1, key_prefix=api_key.prefix)
    time.sleep(0.3)
    assert UsageRecord.objects.filter(key_prefix=api_key.prefix).count() == 1
    assert record.request_id == outcome.request_id
    assert record.api_key_id == api_key.pk and record.key_name == "writer-key"
    assert record.model == "m" * 100 and record.error_type == "e" * 40 and len(record.upstream_request_id) == 128
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (11, 7, 18)
    assert record.cost_usd == Decimal("0.00012346")
    assert record.ttfb_ms == 12.5
    assert record.created_at == outcome.started_at


def test_writer_keeps_a_record_whose_text_holds_a_nul_byte(transactional_db, snapshot, writer):
    """PostgreSQL text cannot hold NUL, which a client may put in a model name: the record is written (NUL as U+FFFD)
    with the rest of its batch, instead of blocking every later record."""
    api_key, snap = snapshot
    w = writer(flush_seconds=0.5)
    outcomes = [outcome_for(snap), outcome_for(snap, model="gpt\x00evil", key=snap), outcome_for(snap)]
    for outcome in outcomes:
        w.record(outcome)
    records = wait_for_records(3, key_prefix=api_key.prefix)
    assert {r.request_id for r in records} == {o.request_id for o in outcomes}
    assert "gpt\ufffdevil" in {r.model for r in records}


def test_writer_keeps_records_while_the_database_fails_and_writes_them_after(transactional_db, snapshot, writer):
    api_key, snap = snapshot
    w = writer()
    w.record(outcome_for(snap))
    wait_for_records(1, key_prefix=api_key.prefix)
    rename_usage_table("usage_away")  # the table is gone: every insert fails, as during an outage
    try:
        outcomes = [outcome_for(snap) for _ in range(25)]
        for outcome in outcomes:
            w.record(outcome)
        deadline = time.monotonic() + 10
        while w.failures < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert w.failures >= 2  # it retried, and kept everything
        assert w.pending() == 25
    finally:
        rename_usage_table("usage_away", back=True)
    records = wait_for_records(26, key_prefix=api_key.prefix)
    assert {o.request_id for o in outcomes} <= {r.request_id for r in records}


def test_writer_recovers_from_a_dropped_connection(transactional_db, snapshot, writer):
    if connection.vendor != "postgresql":
        pytest.skip("terminating a backend is a PostgreSQL feature")
    api_key, snap = snapshot
    backends = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    with connection.cursor() as cursor:
        cursor.execute(backends)
        before = {pid for (pid,) in cursor.fetchall()}  # servers of other tests: not ours to kill
    w = writer()
    w.record(outcome_for(snap))
    wait_for_records(1, key_prefix=api_key.prefix)
    with connection.cursor() as cursor:  # kill the writer thread's connection, as a database restart would
        cursor.execute(backends)
        writer_backends = {pid for (pid,) in cursor.fetchall()} - before
        assert writer_backends
        for pid in writer_backends:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    for _ in range(5):
        w.record(outcome_for(snap))
    wait_for_records(6, key_prefix=api_key.prefix)


def test_writer_keeps_records_of_a_deleted_key(transactional_db, snapshot, writer):
    api_key, snap = snapshot
    w = writer(flush_seconds=3600)
    w.record(outcome_for(snap))
    APIKey.objects.filter(pk=api_key.pk).delete()
    w.stop()
    [record] = wait_for_records(1, key_prefix=api_key.prefix)
    assert record.api_key_id is None and record.key_name == "writer-key"


def test_writer_memory_is_capped_and_what_it_drops_is_logged(transactional_db, snapshot, writer, caplog):
    api_key, snap = snapshot
    w = writer(flush_seconds=3600, batch_size=2, max_buffered=5)
    w.retry_initial = w.retry_max = 3600  # one failed attempt, then no retry while we look
    rename_usage_table("usage_away")
    try:
        with caplog.at_level(logging.ERROR, logger="tollgate.usage"):
            outcomes = [outcome_for(snap) for _ in range(8)]
            for outcome in outcomes:
                w.record(outcome)
            deadline = time.monotonic() + 10
            while not w.failures and time.monotonic() < deadline:
                time.sleep(0.02)
        assert w.failures == 1
        assert (w.pending(), w.dropped) == (5, 3)
        dropped_ids = {o.request_id for o in outcomes[:3]}
        logged = " ".join(r.getMessage() for r in caplog.records)
        assert all(request_id in logged for request_id in dropped_ids)
    finally:
        rename_usage_table("usage_away", back=True)
    w.stop()
    kept = wait_for_records(5, key_prefix=api_key.prefix)
    assert {r.request_id for r in kept} == {o.request_id for o in outcomes[3:]}


def test_stop_writes_everything_buffered(transactional_db, snapshot, writer):
    api_key, snap = snapshot
    w = writer(flush_seconds=3600)
    for _ in range(1234):
        w.record(outcome_for(snap))
    assert w.pending() > 0
    w.stop()
    assert w.pending() == 0
    wait_for_records(1234, timeout=1, key_prefix=api_key.prefix)


def test_last_used_at_is_written_at_most_once_a_minute_without_flushing_key_caches(transactional_db, snapshot, writer):
    api_key, snap = snapshot
    clock = [1000.0]
    w = writer()
    w.timer = lambda: clock[0]
    generation = key_generation()
    updated_at = api_key.updated_at

    first = outcome_for(snap)
    w.record(first)
    wait_for_records(1, key_prefix=api_key.prefix)
    api_key.refresh_from_db()
    assert api_key.last_used_at == first.started_at

    second = outcome_for(snap)  # 30 s later by the writer's clock: too soon to write again
    clock[0] += 30
    w.record(second)
    wait_for_records(2, key_prefix=api_key.prefix)
    time.sleep(0.2)
    api_key.refresh_from_db()
    assert api_key.last_used_at == first.started_at

    third = outcome_for(snap)  # a minute after the first write
    clock[0] += 31
    w.record(third)
    wait_for_records(3, key_prefix=api_key.prefix)
    deadline = time.monotonic() + 5
    while api_key.last_used_at != third.started_at and time.monotonic() < deadline:
        time.sleep(0.05)
        api_key.refresh_from_db()
    assert api_key.last_used_at == third.started_at
    # QuerySet.update sends no post_save: KeyGeneration did not move, and `updated_at` (auto_now) neither.
    assert key_generation() == generation
    assert api_key.updated_at == updated_at


def test_recording_cost_on_the_request_path(transactional_db, snapshot, writer):
    """A micro-benchmark, not a timed assertion: what `record` costs the event loop, with the writer running."""
    api_key, snap = snapshot
    w = writer(flush_seconds=0.2)
    outcomes = [outcome_for(snap, cost_usd=Decimal("0.0001234"), ttfb_ms=3.2, latency_ms=9.9) for _ in range(20_000)]
    w.record(outcomes[0])  # starts the thread
    timings = []
    perf = time.perf_counter_ns
    for outcome in outcomes[1:]:
        started = perf()
        w.record(outcome)
        timings.append(perf() - started)
        if len(timings) % 500 == 0:
            time.sleep(0.002)  # requests arrive over time, not in one tight loop
    timings.sort()
    median = statistics.median(timings) / 1000
    p99 = timings[int(len(timings) * 0.99)] / 1000
    print(f"\nusage recording on the request path: median {median:.2f} µs, p99 {p99:.2f} µs per request")
    w.stop()
    assert UsageRecord.objects.filter(key_prefix=api_key.prefix).count() == 20_000

    # And what the writer thread spends per record, off the request path (bulk_create in batches).
    idle = writer(flush_seconds=3600)
    for outcome in outcomes:
        outcome.request_id = f"req_{uuid.uuid4().hex}"
        idle._buffer.append(capture(outcome))
    started, cpu = time.perf_counter(), time.thread_time()
    assert idle.flush()
    wall = (time.perf_counter() - started) / len(outcomes) * 1e6
    cpu = (time.thread_time() - cpu) / len(outcomes) * 1e6
    print(f"usage writer (off the request path): {cpu:.1f} µs CPU, {wall:.1f} µs wall per record, batches of 500")
    assert UsageRecord.objects.filter(key_prefix=api_key.prefix).count() == 40_000
