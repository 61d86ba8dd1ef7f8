"""Prometheus metrics, correct across gunicorn workers, and the `GET /metrics` endpoint.

Worker processes write their samples to memory-mapped files in `PROMETHEUS_MULTIPROC_DIR` (prometheus-client's
multiprocess mode; `config/gunicorn.conf.py` creates the directory before the workers start and marks dead
workers), and `/metrics` sums them, so one scrape of an instance sees every worker. Without that variable
(`manage.py runserver`, a test in one process) the process's own registry is served.

What is counted, all observed from `core.outcome.REPORTERS` (`observe_request`) and the 401 hook in
`core.errors` (`observe_auth_failure`):

* `tollgate_requests_total{endpoint,model,status}`: every request the API answered, 401s included (endpoint and
  model "");
* `tollgate_upstream_latency_seconds{endpoint,model}`, `tollgate_upstream_ttfb_seconds{endpoint,model}`: requests
  that were sent upstream (whole request, and until the first byte of the answer);
* `tollgate_prompt_tokens_total{endpoint,model}`, `tollgate_completion_tokens_total{endpoint,model}`;
* `tollgate_rejections_total{reason}`: `auth`, and each refusal of `core.outcome.ErrorType` that Tollgate makes
  before asking the upstream (`invalid_request`, `model_not_allowed`, `rate_limit_requests`, `rate_limit_tokens`,
  `rate_limit_concurrency`, `budget`, `service_unavailable`);
* `tollgate_streams_in_flight`: streams being relayed now, summed over live workers.

With `METRICS_PER_KEY=true` the request, latency, token and rejection metrics also carry `key` (the key's public
prefix, never the key): one series per key, so leave it off with many keys.

`endpoint` is the endpoint's declared name (`chat.completions`, `embeddings`, ...: a closed set). `model` is the
requested model (`""` when the body could not be parsed). Clients choose model names, so each
worker labels at most `MAX_MODEL_LABELS` names beyond those the upstream has answered with a 2xx, and counts
any further name as `other`: normally every model keeps its name, and a client sending made-up names cannot
create unbounded series.
"""

import hmac
import os

from django.conf import settings
from django.http import HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

from .errors import error_response
from .outcome import GATEWAY_REFUSALS

PER_KEY = settings.METRICS_PER_KEY
_KEY = ("key",) if PER_KEY else ()

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Set by an operator, the variable also reaches processes that start before gunicorn creates the directory
    # (`manage.py migrate` in the container's entry point); creating a metric there must not fail.
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter(
    "tollgate_requests",
    "Requests answered by the API, by HTTP status and model.",
    ("endpoint", "model", "status", *_KEY),
)
UPSTREAM_LATENCY = Histogram(
    "tollgate_upstream_latency_seconds",
    "Time from the request reaching the view to the end of the upstream answer (streams: the last event).",
    ("endpoint", "model", *_KEY),
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_TTFB = Histogram(
    "tollgate_upstream_ttfb_seconds",
    "Time from the request reaching the view to the first byte of the upstream answer relayed to the client.",
    ("endpoint", "model", *_KEY),
    buckets=TTFB_BUCKETS,
)
PROMPT_TOKENS = Counter(
    "tollgate_prompt_tokens", "Prompt (input) tokens, as the upstream reported them.", ("endpoint", "model", *_KEY)
)
COMPLETION_TOKENS = Counter(
    "tollgate_completion_tokens",
    "Completion (output) tokens, as the upstream reported them.",
    ("endpoint", "model", *_KEY),
)
REJECTIONS = Counter("tollgate_rejections", "Requests Tollgate refused itself, by reason.", ("reason", *_KEY))
STREAMS_IN_FLIGHT = Gauge("tollgate_streams_in_flight", "Streams being relayed right now.", multiprocess_mode="livesum")


def rejection_reason(outcome) -> str | None:
    """Why Tollgate refused the request itself (before any upstream call), or None if it went upstream."""
    error_type = outcome.error_type
    return str(error_type) if error_type in GATEWAY_REFUSALS else None


MAX_MODEL_LABELS = 100
_known_models: set[str] = set()
_unconfirmed_models = 0
_children: dict = {}


def _child(metric, *labels):
    """`metric.labels(*labels)`, memoised: the label values are bounded (see the module docstring)."""
    try:
        return _children[metric, labels]
    except KeyError:
        child = _children[metric, labels] = metric.labels(*labels)
        return child


def model_label(outcome) -> str:
    global _unconfirmed_models
    model = outcome.model
    if not model or model in _known_models:
        return model
    if 200 <= outcome.status < 300:
        _known_models.add(model)  # a real model: the upstream served it
        return model
    if _unconfirmed_models < MAX_MODEL_LABELS:
        _unconfirmed_models += 1
        _known_models.add(model)
        return model
    return "other"


def observe_request(outcome) -> None:
    """REPORTERS entry: count one finished request."""
    model = model_label(outcome)
    key = (outcome.key.prefix,) if PER_KEY else ()
    endpoint = outcome.endpoint
    _child(REQUESTS, endpoint, model, str(outcome.status), *key).inc()
    reason = rejection_reason(outcome)
    if reason is not None:
        _child(REJECTIONS, reason, *key).inc()
        return
    _child(UPSTREAM_LATENCY, endpoint, model, *key).observe(outcome.latency_ms / 1000)
    if outcome.ttfb_ms is not None:
        _child(UPSTREAM_TTFB, endpoint, model, *key).observe(outcome.ttfb_ms / 1000)
    if outcome.prompt_tokens:
        _child(PROMPT_TOKENS, endpoint, model, *key).inc(outcome.prompt_tokens)
    if outcome.completion_tokens:
        _child(COMPLETION_TOKENS, endpoint, model, *key).inc(outcome.completion_tokens)


def observe_auth_failure(request, exc) -> None:
    """`core.errors.AUTH_FAILURE_REPORTERS` entry: a 401 (the key is unknown, so `key` is empty)."""
    key = ("",) if PER_KEY else ()
    _child(REQUESTS, "", "", "401", *key).inc()
    _child(REJECTIONS, "auth", *key).inc()


def stream_started() -> None:
    STREAMS_IN_FLIGHT.inc()


def stream_finished() -> None:
    STREAMS_IN_FLIGHT.dec()


_registry = None


def get_registry():
    """The registry `/metrics` renders: every worker's files in multiprocess mode, else this process's own."""
    global _registry
    if _registry is None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)
            _registry = registry
        else:
            _registry = REGISTRY
    return _registry


def _authorized(request) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


async def metrics_view(request):
    """GET /metrics: the Prometheus text format. With `METRICS_TOKEN` set, requires `Authorization: Bearer <it>`.

    Collection reads a few small memory-mapped files per worker and runs on the event loop: a scrape costs about
    a millisecond (see the README), far less than a thread hop would save.
    """
    if request.method not in ("GET", "HEAD"):
        return error_response(405, f"Method {request.method} not allowed.", "invalid_request_error")
    if not _authorized(request):
        response = error_response(401, "A valid metrics token is required.", "invalid_request_error")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(get_registry()), content_type=CONTENT_TYPE_LATEST)
