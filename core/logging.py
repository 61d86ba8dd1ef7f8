"""Structured logs: the JSON and plain formatters (`LOG_FORMAT`), and the one log line per request.

`log_request(outcome)` is a `core.outcome.REPORTERS` entry: every authenticated request produces exactly
one line on the `tollgate.requests` logger, with the fields in `REQUEST_FIELDS`. `log_auth_failure` adds a
line for each 401 (authentication fails before an outcome exists). A line never carries the raw key, the
`Authorization` header or the prompt; with `LOG_PROMPTS=true` it carries the request's `messages`.

This module is imported by the LOGGING config while settings load: it must not import Django models.
"""

import logging
from datetime import UTC, datetime

import orjson

from .outcome import ErrorType

request_logger = logging.getLogger("tollgate.requests")

REQUEST_FIELDS = (
    "request_id",
    "key_prefix",
    "endpoint",
    "model",
    "status",
    "error_type",
    "streamed",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "usage_estimated",
    "latency_ms",
    "ttfb_ms",
    "upstream_request_id",
    "upstream",
    "attempts",
)

# LogRecord attributes that are never copied into a JSON line. Extras other than `fields` are dropped on purpose:
# Django's own loggers attach the request object, whose headers hold the key.
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: `timestamp` (ISO 8601, UTC), `level`, `logger`, `message`, then `fields`.

    A record logged with `extra={"fields": {...}}` has those keys at the top level of the object. Exceptions are
    rendered into `exc_info` as text. Values that JSON cannot hold are written as `str(value)`.
    """

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for name, value in fields.items():
                if name not in _RESERVED:
                    line.setdefault(name, value)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


class PlainFormatter(logging.Formatter):
    """`%(asctime)s %(levelname)s %(name)s %(message)s`, then ` name=value` for each of `fields` (if any)."""

    def __init__(self, fmt="%(asctime)s %(levelname)s %(name)s %(message)s", *args, **kwargs):
        super().__init__(fmt, *args, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if not isinstance(fields, dict):
            return text
        pairs = " ".join(f"{name}={_plain(value)}" for name, value in fields.items())
        head, sep, tail = text.partition("\n")  # keep a traceback below the line
        return f"{head} {pairs}{sep}{tail}"


def _plain(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value if value and " " not in value else orjson.dumps(value).decode()
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, (list, dict)):
        return orjson.dumps(value, default=str).decode()
    return str(value)


def request_fields(outcome) -> dict:
    """The log fields of a finished `RequestOutcome` (the key's public prefix only, never the key)."""
    key = outcome.key
    fields = {
        "request_id": outcome.request_id,
        "key_prefix": getattr(key, "prefix", "") or "",
        "endpoint": outcome.endpoint,
        "model": outcome.model,
        "status": outcome.status,
        "error_type": str(outcome.error_type),
        "streamed": outcome.streamed,
        "prompt_tokens": outcome.prompt_tokens,
        "cached_tokens": outcome.cached_tokens,
        "completion_tokens": outcome.completion_tokens,
        "usage_estimated": outcome.usage_estimated,
        "latency_ms": round(outcome.latency_ms, 2),
        "ttfb_ms": None if outcome.ttfb_ms is None else round(outcome.ttfb_ms, 2),
        "upstream_request_id": outcome.upstream_request_id,
        "upstream": outcome.upstream,
        "attempts": outcome.attempts,
    }
    messages = getattr(outcome, "prompt_messages", None)
    if messages is not None:  # only filled when LOG_PROMPTS=true (completions/relay.py)
        fields["messages"] = messages
    return fields


def log_request(outcome) -> None:
    """REPORTERS entry: one INFO line per finished request (WARNING for 5xx)."""
    level = logging.WARNING if outcome.status >= 500 else logging.INFO
    if request_logger.isEnabledFor(level):
        request_logger.log(level, "request", extra={"fields": request_fields(outcome)})


def log_auth_failure(request, exc) -> None:
    """`core.errors.AUTH_FAILURE_REPORTERS` entry: a line for a 401 (no key prefix: the key is unknown)."""
    if not request_logger.isEnabledFor(logging.INFO):
        return
    django_request = getattr(request, "_request", request)
    fields = dict.fromkeys(REQUEST_FIELDS)
    fields.update(
        request_id=getattr(django_request, "request_id", ""),
        key_prefix="",
        endpoint="",
        model="",
        status=401,
        error_type=str(ErrorType.INVALID_API_KEY),
        streamed=False,
        prompt_tokens=0,
        cached_tokens=0,
        completion_tokens=0,
        usage_estimated=False,
        upstream_request_id="",
    )
    request_logger.info("request", extra={"fields": fields})
