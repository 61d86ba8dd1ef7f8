"""What the relay reports about each attempt on an upstream (`upstreams.metrics`)."""

from .metrics import UPSTREAM_ERRORS, UPSTREAM_FAILOVERS, UPSTREAM_REQUESTS, UPSTREAM_RESPONSE
from .targets import Target

_children: dict = {}


def _child(metric, *labels):
    try:
        return _children[metric, labels]
    except KeyError:
        child = _children[metric, labels] = metric.labels(*labels)
        return child


def upstream_attempted(target: Target, seconds: float, failure: str | None) -> None:
    """One attempt on `target` took `seconds` to its answer's head; `failure` is its failover reason, if any."""
    _child(UPSTREAM_REQUESTS, target.name, "failed" if failure else "ok").inc()
    _child(UPSTREAM_RESPONSE, target.name).observe(seconds)
    if failure:
        _child(UPSTREAM_ERRORS, target.name, failure).inc()


def upstream_failed_over(target: Target) -> None:
    """A request that `target` failed goes on to another upstream."""
    _child(UPSTREAM_FAILOVERS, target.name).inc()
