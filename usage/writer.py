"""Usage records: one `UsageRecord` row per authenticated request, written in batches off the request path.

`record_usage(outcome)` is a `core.outcome.REPORTERS` entry (registered in `CompletionsConfig.ready`).
On the event loop it only copies the outcome's fields into a tuple and appends it to an in-memory buffer (a
few microseconds, no I/O). A daemon thread per process (`UsageWriter`) drains the buffer every
`USAGE_FLUSH_SECONDS` or as soon as `USAGE_BATCH_SIZE` records wait, one transaction per batch: an
`INSERT … ON CONFLICT (request_id, created_at) DO NOTHING RETURNING request_id` (on PostgreSQL from `unnest` of
one array per column), then the upserts of the hourly and daily rollups (`usage.rollups`) with the sums of exactly
the rows returned, so records and rollups commit together.

Guarantees:

* **never twice**: (`request_id`, `created_at`) is unique (`created_at` is the request's start, captured once)
  and rows that already exist are skipped, so a batch retried after a commit whose answer was lost cannot double
  a request, in the records or in the rollups;
* **never lost on a clean shutdown**: `core.lifecycle` runs `usage_writer.stop` from the ASGI lifespan
  (SIGTERM) and at interpreter exit; it writes everything still buffered, retrying for up to
  `shutdown_retry_seconds`, and only then logs what it could not write (one ERROR line per record, enough to
  replay it);
* **kept while the database is away**: a batch that fails (database down or restarting, table locked, a deploy
  halfway through its migrations) goes back to the front of the buffer and is retried with exponential
  backoff. Only past `USAGE_MAX_BUFFERED` records are the oldest ones dropped, each logged at ERROR;
* **a record the database refuses for its own content** (it should not happen: strings are truncated and
  numbers clamped to the columns) is logged at ERROR and skipped, so that it cannot block every later record.

The writer also sets `APIKey.last_used_at`, at most once per key per `last_used_every` seconds per process, through
`QuerySet.update`: that sends no `post_save`, so it does not bump `KeyGeneration` and every worker keeps its
key cache.
"""

import atexit
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, close_old_connections, connections, transaction
from django.utils import timezone

from .endpoint_names import CHAT_COMPLETIONS

logger = logging.getLogger("tollgate.usage")

# Column limits of UsageRecord (usage/models.py): values are fitted to them before insert.
_MAX_UINT = 2**31 - 1
_COST_MAX = Decimal("999999.99999999")
_COST_QUANTUM = Decimal("0.00000001")

# Rows per INSERT statement (x 22 columns: under SQLite's 32,766 and PostgreSQL's 65,535 parameters).
_INSERT_CHUNK = 1000

# The order of the fields in a buffered row (see `capture`).
ROW_FIELDS = (
    "request_id",
    "api_key_id",
    "key_prefix",
    "key_name",
    "endpoint",
    "model",
    "status",
    "error_type",
    "streamed",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "hosted_tool_calls",
    "usage_estimated",
    "cost_usd",
    "latency_ms",
    "ttfb_ms",
    "upstream_request_id",
    "created_at",
    "upstream",
    "attempts",
)
# Where `_touch_keys` finds a captured row's key and start time.
_ROW_KEY = ROW_FIELDS.index("api_key_id")
_ROW_STARTED = ROW_FIELDS.index("created_at")


def capture(outcome) -> tuple:
    """The outcome's fields as a plain tuple (ordered as `ROW_FIELDS`): cheap, and immune to later mutation."""
    key = outcome.key
    return (
        outcome.request_id,
        key.id,
        key.prefix,
        key.name,
        outcome.endpoint,
        outcome.model,
        outcome.status,
        outcome.error_type,
        outcome.streamed,
        outcome.prompt_tokens,
        outcome.cached_tokens,
        outcome.completion_tokens,
        outcome.reasoning_tokens,
        dict(outcome.hosted_tool_calls) if outcome.hosted_tool_calls else None,
        outcome.usage_estimated,
        outcome.cost_usd,
        outcome.latency_ms,
        outcome.ttfb_ms,
        outcome.upstream_request_id,
        outcome.started_at,
        outcome.upstream,
        outcome.attempts,
    )


def _count(value) -> int:
    try:
        return min(max(int(value or 0), 0), _MAX_UINT)
    except (TypeError, ValueError):
        return 0


def _text(value, limit: int) -> str:
    """`value` as text for a column of `limit` characters. NUL, which PostgreSQL text cannot hold (a client may send
    it in a model name), becomes U+FFFD: the record is kept, not refused."""
    return str(value or "").replace("\x00", "\ufffd")[:limit]


def _cost(value) -> Decimal:
    try:
        cost = Decimal(value or 0).quantize(_COST_QUANTUM)
    except (ArithmeticError, TypeError, ValueError):
        return Decimal(0)
    return min(max(cost, Decimal(0)), _COST_MAX)


# UsageRecord's columns in the order `fit` returns them (and the raw INSERT lists them).
INSERT_COLUMNS = (
    "request_id",
    "api_key_id",
    "key_prefix",
    "key_name",
    "endpoint",
    "model",
    "status",
    "error_type",
    "streamed",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "hosted_tool_calls",
    "hosted_tools",
    "total_tokens",
    "usage_estimated",
    "cost_usd",
    "latency_ms",
    "ttfb_ms",
    "upstream_request_id",
    "created_at",
    "upstream",
    "attempts",
)


def fit(row: tuple) -> tuple:
    """A captured row as UsageRecord column values (`INSERT_COLUMNS` order), each fitted to its column.

    An outcome that names no endpoint is recorded as a chat completion (the only endpoint before there were
    several); cached tokens are clamped to the prompt tokens they are part of. `error_type` (a `StrEnum`) is
    stored as its value.
    """
    (request_id, key_id, prefix, name, endpoint, model, status, error_type, streamed, prompt, cached, completion,
     reasoning, tool_calls, estimated, cost, latency, ttfb, upstream_id, created_at, upstream,
     attempts) = row  # fmt: skip
    prompt, completion = _count(prompt), _count(completion)
    tool_calls = tool_calls if isinstance(tool_calls, dict) else {}
    return (
        _text(request_id, 64),
        key_id,
        _text(prefix, 8),
        _text(name, 50),
        _text(endpoint or CHAT_COMPLETIONS, 40),
        _text(model, 100),
        min(max(int(status or 0), 0), 32767),
        _text(error_type, 40),
        bool(streamed),
        prompt,
        min(_count(cached), prompt),
        completion,
        min(_count(reasoning), completion),
        _count(sum(_count(count) for count in tool_calls.values())),
        _text(",".join(f"{item}:{_count(count)}" for item, count in sorted(tool_calls.items())), 200),
        min(prompt + completion, _MAX_UINT),
        bool(estimated),
        _cost(cost),
        float(latency or 0),
        None if ttfb is None else float(ttfb),
        _text(upstream_id, 128),
        created_at,
        _text(upstream, 64),
        min(_count(attempts), 32767),
    )


def build_record(row: tuple):
    """A `UsageRecord` (unsaved) from a captured row, every value fitted to its column."""
    from .models import UsageRecord

    return UsageRecord(**dict(zip(INSERT_COLUMNS, fit(row), strict=True)))


def _row_for_log(row: tuple) -> dict:
    out = dict(zip(ROW_FIELDS, row, strict=True))
    for name, value in out.items():
        if isinstance(value, Decimal):
            out[name] = str(value)
        elif isinstance(value, datetime):
            out[name] = value.isoformat()
    return out


class UsageWriter:
    """Buffers captured outcomes and writes them in batches from one daemon thread (started on first use).

    `record` is the only method meant for the event loop. `flush` writes everything buffered (from the calling
    thread) and returns False when the database failed and records were kept. `stop` is the clean-shutdown
    hook. Tests build their own writer and swap `timer`.
    """

    # Annotated as a plain callable so that it is not bound as a method (tests swap it).
    timer: Callable[[], float] = time.monotonic
    # Backoff between retries while the database is failing: doubles from `retry_initial` up to `retry_max`.
    retry_initial = 0.25
    retry_max = 10.0
    # How long a clean shutdown keeps retrying a failing database before it logs the records instead.
    shutdown_retry_seconds = 15.0
    # APIKey.last_used_at is written at most this often per key and process.
    last_used_every = 60.0
    # Add what each batch inserts to the hourly rollups (usage.rollups). Off only to measure what they cost
    # (bench/usage_scale.py): every reader of usage totals reads the rollups.
    rollups_enabled = True

    def __init__(
        self,
        *,
        flush_seconds: float | None = None,
        batch_size: int | None = None,
        max_buffered: int | None = None,
        using: str = "default",
    ):
        self.flush_seconds = settings.USAGE_FLUSH_SECONDS if flush_seconds is None else flush_seconds
        self.batch_size = settings.USAGE_BATCH_SIZE if batch_size is None else batch_size
        self.max_buffered = settings.USAGE_MAX_BUFFERED if max_buffered is None else max_buffered
        self.using = using
        self._buffer: deque = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_used: dict = {}  # key id -> self.timer() of this process's last write of last_used_at
        self._known_keys: set = set()  # key ids seen to exist (see _unlink_unknown_keys)
        self._partitions_month = ""  # the month (YYYY-MM) whose partitions this process made sure of
        self.failures = 0  # consecutive failed flushes
        self.dropped = 0  # records dropped past max_buffered (each logged)
        if hasattr(os, "register_at_fork"):
            # A forked child must not inherit the parent's thread state or buffered rows (the parent writes them).
            os.register_at_fork(after_in_child=self._reset_after_fork)

    # -- the request path ---------------------------------------------------------------------------------------

    def record(self, outcome) -> None:
        """Buffer one finished request (event loop; no I/O). Starts the writer thread on first use."""
        buffer = self._buffer
        buffer.append(capture(outcome))
        if self._thread is None:
            self._start()
        size = len(buffer)
        if size >= self.batch_size:
            self._wake.set()
        if size > self.max_buffered:
            self._drop_oldest()

    def pending(self) -> int:
        """Records buffered and not yet written."""
        return len(self._buffer)

    # -- the writer thread --------------------------------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="tollgate-usage-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        delay = self.flush_seconds
        try:
            while not self._stop.is_set():
                if self.failures:
                    # Backing off: only a shutdown cuts the wait short, a full buffer does not.
                    self._stop.wait(delay)
                else:
                    self._wake.wait(self.flush_seconds)
                    self._wake.clear()
                if self._stop.is_set():
                    break
                try:
                    ok = self.flush()
                except Exception:  # never let the thread die: the next round retries
                    logger.exception("usage writer: unexpected error")
                    ok = False
                delay = self.flush_seconds if ok else min(self.retry_initial * 2 ** (self.failures - 1), self.retry_max)
            self._flush_for_shutdown()
        finally:
            self._close_connection()

    def _flush_for_shutdown(self) -> None:
        deadline = self.timer() + self.shutdown_retry_seconds
        delay = self.retry_initial
        while True:
            try:
                if self.flush():
                    return
            except Exception:
                logger.exception("usage writer: unexpected error during the shutdown flush")
            if self.timer() + delay > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        rows = self._drain(len(self._buffer))
        logger.error(
            "usage writer: database unavailable at shutdown; %d usage records not written (logged below)", len(rows)
        )
        for row in rows:
            logger.error("usage record not written: %s", _row_for_log(row))

    def stop(self, timeout: float | None = None) -> None:
        """Write everything buffered and stop the thread (clean shutdown). Safe to call more than once."""
        with self._start_lock:
            thread = self._thread
            if thread is None or not thread.is_alive():
                if not self._buffer:
                    return
                # Rows but no thread (records after an earlier stop): a short-lived one writes them, so the
                # database work stays off the caller's thread and connection.
                thread = threading.Thread(target=self._run, name="tollgate-usage-writer", daemon=True)
                self._thread = thread
                self._stop.set()
                thread.start()
            self._stop.set()
            self._wake.set()
        thread.join(self.shutdown_retry_seconds + 30 if timeout is None else timeout)

    def _reset_after_fork(self) -> None:
        self._buffer = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread = None
        self._last_used = {}
        self.failures = 0

    # -- writing ------------------------------------------------------------------------------------------------

    def _drain(self, limit: int) -> list:
        rows: list[tuple] = []
        popleft = self._buffer.popleft
        try:
            while len(rows) < limit:
                rows.append(popleft())
        except IndexError:
            pass
        return rows

    def _drop_oldest(self) -> None:
        while len(self._buffer) > self.max_buffered:
            try:
                row = self._buffer.popleft()
            except IndexError:
                return
            self.dropped += 1
            logger.error(
                "usage writer: more than %d records waiting (database unavailable?); dropped: %s",
                self.max_buffered,
                _row_for_log(row),
            )

    def flush(self) -> bool:
        """Write every buffered record in batches. True when the buffer was emptied, False if the database
        failed (the failed batch is back at the front of the buffer, in order). Call from a thread, not the
        event loop."""
        with self._flush_lock:
            while self._buffer:
                batch = self._drain(self.batch_size)
                try:
                    close_old_connections()
                    self._write(batch)
                except Exception as exc:
                    self._buffer.extendleft(reversed(batch))
                    if len(self._buffer) > self.max_buffered:
                        self._drop_oldest()
                    self.failures += 1
                    log = logger.error if self.failures in (1, 10) or self.failures % 100 == 0 else logger.warning
                    log(
                        "usage writer: could not write %d records (attempt %d, %d buffered, retrying): %s",
                        len(batch),
                        self.failures,
                        len(self._buffer),
                        exc,
                    )
                    self._close_connection()
                    return False
                if self.failures:
                    logger.warning("usage writer: database back after %d failed attempts", self.failures)
                    self.failures = 0
                self._touch_keys(batch)
            return True

    def _write(self, batch: list) -> None:
        rows = self._unlink_unknown_keys([fit(row) for row in batch])
        try:
            with transaction.atomic(using=self.using):
                self._insert(rows)
        except (IntegrityError, DataError):
            records = [build_record(row) for row in batch]
            # A key deleted since the request: keep the record (prefix and name are stored), drop the link.
            self._unlink_deleted_keys(records)
            self._write_one_by_one(records)

    def _insert(self, rows: list) -> int:
        """Insert `rows` (fitted, `INSERT_COLUMNS` order) and add the ones the database took to the hourly
        rollups (`usage.rollups`), in the caller's transaction; return how many were inserted.

        `INSERT … ON CONFLICT (request_id, created_at) DO NOTHING RETURNING …`: rows that already exist (a batch
        retried after a commit whose answer was lost) are not returned, so they add nothing to the rollups either.
        PostgreSQL: one statement per batch, `INSERT … SELECT * FROM unnest(<one array per column>)` whose returned
        rows feed the two rollup upserts in the same statement (`usage.rollups.rollup_upserts_sql`): the sums are
        the database's, and nothing comes back through Python but a count. SQLite (>= 3.35): multi-row VALUES,
        then `rollup_add` from the returned ids.

        Not `bulk_create`: building model instances and running each value through the field machinery cost
        more than the database's own work, on a thread that shares the GIL with the event loop.
        """
        from .models import UsageRecord
        from .rollups import rollup_add, rollup_deltas, rollup_upserts_sql

        self._ensure_partitions()
        connection = connections[self.using]
        ops = connection.ops
        quote = ops.quote_name
        meta = UsageRecord._meta
        # By attname (`api_key_id`), concrete fields only: `_meta.get_field` is typed for relations without columns.
        concrete = {field.attname: field.column for field in meta.concrete_fields}
        columns = ", ".join(quote(concrete[name]) for name in INSERT_COLUMNS)
        one = "(" + ", ".join(["%s"] * len(INSERT_COLUMNS)) + ")"
        conflict = f"ON CONFLICT ({quote('request_id')}, {quote('created_at')}) DO NOTHING"
        cost_at, created_at = INSERT_COLUMNS.index("cost_usd"), INSERT_COLUMNS.index("created_at")
        adapt_cost, adapt_time = ops.adapt_decimalfield_value, ops.adapt_datetimefield_value
        params = []
        for row in rows:
            row = list(row)
            row[cost_at] = adapt_cost(row[cost_at], 14, 8)
            row[created_at] = adapt_time(row[created_at])
            params.append(row)
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # One statement whatever the batch size: a row per element of 22 arrays. (Not `executemany`: each
                # of its statements pays the partitioned table's routing set-up, 10x the cost of the row itself.)
                types = {field.attname: field.db_type(connection) for field in meta.concrete_fields}
                arrays = ", ".join(f"%s::{types[name]}[]" for name in INSERT_COLUMNS)
                table = quote(meta.db_table)
                sql = f"INSERT INTO {table} ({columns}) SELECT * FROM unnest({arrays}) {conflict}"  # noqa: S608
                if self.rollups_enabled:
                    hourly, daily = rollup_upserts_sql("inserted", quote=quote)
                    sql = (
                        f"WITH inserted AS ({sql} RETURNING *), hourly AS ({hourly}), daily AS ({daily}) "  # noqa: S608
                        "SELECT count(*) FROM inserted"
                    )
                # Server-side binding (a plain psycopg cursor, not Django's client-side one): the arrays go as
                # parameters, adapted by psycopg's C dumpers, instead of being rendered into the SQL text.
                import psycopg

                # Its errors are psycopg's own: wrapped into Django's (DataError, IntegrityError), so that a record
                # the database refuses (a NUL byte in a model name) sends the batch to the one-by-one path, which
                # skips it, instead of retrying the batch for ever.
                with connection.wrap_database_errors, psycopg.Cursor(cursor.connection) as bound:
                    bound.execute(sql, [list(column) for column in zip(*params, strict=True)])
                    if not self.rollups_enabled:
                        return len(rows)
                    counted = bound.fetchone()
                    assert counted is not None  # a SELECT count(*) always has its row
                    return counted[0]
            else:
                returning = f" RETURNING {quote('request_id')}" if self.rollups_enabled else ""
                inserted: Counter = Counter()
                for start in range(0, len(params), _INSERT_CHUNK):
                    chunk = params[start : start + _INSERT_CHUNK]
                    values = ", ".join([one] * len(chunk))
                    sql = f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES {values} {conflict}{returning}"  # noqa: S608
                    cursor.execute(sql, [value for row in chunk for value in row])
                    if returning:
                        inserted.update(request_id for (request_id,) in cursor.fetchall())
        if not self.rollups_enabled:
            return len(rows)
        taken = []
        for row in rows:  # a request id the batch holds twice was inserted at most as often as returned
            if inserted[row[0]] > 0:
                inserted[row[0]] -= 1
                taken.append(dict(zip(INSERT_COLUMNS, row, strict=True)))
        rollup_add(rollup_deltas(taken), using=self.using)
        return len(taken)

    def _ensure_partitions(self) -> None:
        """Create this month's and next month's usage partitions if missing (PostgreSQL; once per process and
        month: `usage.partitions`)."""
        from .partitions import usage_partitions_ensure

        month = timezone.now().strftime("%Y-%m")
        if self._partitions_month != month:
            usage_partitions_ensure(using=self.using)
            self._partitions_month = month

    def _unlink_unknown_keys(self, rows: list) -> list:
        """Rows whose key no longer exists lose the link (the column has no database constraint, see the model);
        key ids already seen to exist are remembered, so a steady batch asks the database nothing."""
        from apikeys.models import APIKey

        unseen = {row[1] for row in rows if row[1] is not None and row[1] not in self._known_keys}
        if not unseen:
            return rows
        existing = set(APIKey.objects.using(self.using).filter(pk__in=unseen).values_list("pk", flat=True))
        self._known_keys.update(existing)
        return [row if row[1] is None or row[1] in self._known_keys else (row[0], None, *row[2:]) for row in rows]

    def _unlink_deleted_keys(self, records: list) -> None:
        from apikeys.models import APIKey

        ids = {r.api_key_id for r in records if r.api_key_id is not None}
        existing = set(APIKey.objects.using(self.using).filter(pk__in=ids).values_list("pk", flat=True))
        for record in records:
            if record.api_key_id is not None and record.api_key_id not in existing:
                record.api_key_id = None

    def _write_one_by_one(self, records: list) -> None:
        """Insert each record alone (with its rollup); one the database refuses for its content is logged and
        skipped."""
        for record in records:
            row = tuple(getattr(record, name) for name in INSERT_COLUMNS)
            try:
                with transaction.atomic(using=self.using):
                    self._insert([row])
            except (IntegrityError, DataError) as exc:
                fields = {name: getattr(record, name) for name in INSERT_COLUMNS}
                logger.error("usage record refused by the database (%s); not written: %s", exc, fields)

    def _touch_keys(self, batch: list) -> None:
        """Set `last_used_at` (to the latest request start seen) for keys not written for `last_used_every` s."""
        from apikeys.services import api_key_touch_last_used

        now = self.timer()
        latest: dict = {}
        for row in batch:
            key_id, started = row[_ROW_KEY], row[_ROW_STARTED]
            if key_id is None or now - self._last_used.get(key_id, float("-inf")) < self.last_used_every:
                continue
            if key_id not in latest or started > latest[key_id]:
                latest[key_id] = started
        if not latest:
            return
        try:
            # The key app's service: one UPDATE, no KeyGeneration bump, never backwards.
            api_key_touch_last_used(last_used=latest, using=self.using)
            for key_id in latest:
                self._last_used[key_id] = now
        except DatabaseError as exc:
            logger.warning("usage writer: could not update last_used_at: %s", exc)
            self._close_connection()

    def _close_connection(self) -> None:
        try:
            connections[self.using].close()
        except Exception as exc:  # a broken connection may fail to close; it is dropped either way
            logger.debug("usage writer: closing the connection failed: %s", exc)


usage_writer = UsageWriter()


def record_usage(outcome) -> None:
    """The `REPORTERS` entry: buffer a usage record for `outcome` (unless whoever settles it records it later)."""
    if outcome.usage_deferred:
        return
    usage_writer.record(outcome)


def install() -> None:
    """Configure the process's writer, register the reporter and the shutdown flush (CompletionsConfig.ready)."""
    from core import lifecycle
    from core.outcome import REPORTERS

    if record_usage not in REPORTERS:
        REPORTERS.append(record_usage)
        lifecycle.on_shutdown(usage_writer.stop)
        # Records finished after the lifespan shutdown (or in a process without one) are flushed at exit too.
        atexit.register(usage_writer.stop)
