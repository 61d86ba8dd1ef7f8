from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"

    def ready(self):
        # Prometheus counters and the per-request log line hang off the one report of each finished request, and
        # off each 401 (which fails before a request outcome exists).
        from . import errors, metrics, outcome
        from .logging import log_auth_failure, log_request

        outcome.REPORTERS.extend([metrics.observe_request, log_request])
        errors.AUTH_FAILURE_REPORTERS.extend([metrics.observe_auth_failure, log_auth_failure])

        # Every serving process measures its event loop's lag (core/looplag.py).
        from . import lifecycle
        from .looplag import monitor

        lifecycle.on_startup(monitor.start)
        lifecycle.on_shutdown(monitor.stop)
