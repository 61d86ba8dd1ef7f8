from django.apps import AppConfig


class CompletionsConfig(AppConfig):
    name = "completions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Operability (issue 7): Prometheus counters and the per-request log line hang off the one report of
        # each finished request, and off each 401 (which fails before a request outcome exists).
        from . import errors, metrics, outcome
        from .logging import log_auth_failure, log_request

        outcome.REPORTERS.extend([metrics.observe_request, log_request])
        errors.AUTH_FAILURE_REPORTERS.extend([metrics.observe_auth_failure, log_auth_failure])

        # Usage accounting (issue 5): a UsageRecord per finished request, written in batches by a background
        # thread, flushed on clean shutdown.
        from .usage import install as install_usage_recording

        install_usage_recording()
