from django.apps import AppConfig


class CompletionsConfig(AppConfig):
    name = "completions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Every served worker follows the background responses of every instance (each claimed by one at a time).
        from core import lifecycle

        from .background import follower

        lifecycle.on_startup(follower.start)
        lifecycle.on_shutdown(follower.stop)
