from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"
    verbose_name = "Alerts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Each gateway worker scans for alerts and delivers them from one background thread, started with the
        # ASGI lifespan (not in manage.py commands or tests that import the apps).
        from core import lifecycle

        from .runner import alert_runner

        lifecycle.on_startup(alert_runner.start)
        lifecycle.on_shutdown(alert_runner.stop)
