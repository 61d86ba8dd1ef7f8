from django.apps import AppConfig


class CompletionsConfig(AppConfig):
    name = "completions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # `usage` reports by endpoint but may not import the relay: it is told the declared names.
        from usage.endpoint_names import register

        from .endpoints import ENDPOINTS

        register(endpoint.name for endpoint in ENDPOINTS)

        # Every served worker follows the background responses of every instance (each claimed by one at a time).
        from core import lifecycle

        from .background import follower

        lifecycle.on_startup(follower.start)
        lifecycle.on_shutdown(follower.stop)
