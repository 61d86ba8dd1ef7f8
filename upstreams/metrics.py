"""Per-upstream Prometheus metrics (served by `core.metrics`' `/metrics`, multiprocess like the others):

* `tollgate_upstream_requests_total{upstream,result}`: attempts sent to an upstream (`ok`: it answered with a
  status the client gets, `failed`: a failure that moves the request to the next upstream or ends it);
* `tollgate_upstream_errors_total{upstream,reason}`: those failures by reason (`connect`, `timeout`, `5xx`, `429`);
* `tollgate_upstream_response_seconds{upstream}`: histogram, from sending to the upstream's answer head;
* `tollgate_upstream_failovers_total{upstream}`: requests moved away from this upstream to another;
* `tollgate_upstream_resting{upstream}`: 1 while this worker knows the upstream to be resting, else 0.
"""

from prometheus_client import Counter, Gauge, Histogram

from core import metrics as _core_metrics  # noqa: F401  (creates the multiprocess directory first)

UPSTREAM_REQUESTS = Counter("tollgate_upstream_requests", "Attempts sent to each upstream.", ("upstream", "result"))
UPSTREAM_ERRORS = Counter("tollgate_upstream_errors", "Failed attempts by upstream and reason.", ("upstream", "reason"))
UPSTREAM_RESPONSE = Histogram(
    "tollgate_upstream_response_seconds",
    "From sending a request to an upstream to its answer's head.",
    ("upstream",),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPSTREAM_FAILOVERS = Counter(
    "tollgate_upstream_failovers", "Requests moved from this upstream to another.", ("upstream",)
)
UPSTREAM_RESTING = Gauge(
    "tollgate_upstream_resting",
    "1 while the upstream rests (as this worker knows).",
    ("upstream",),
    multiprocess_mode="livemax",
)
