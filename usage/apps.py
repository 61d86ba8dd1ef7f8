from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "usage"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # A UsageRecord per finished request, written in batches by a background thread, flushed on clean shutdown.
        from .writer import install

        install()
