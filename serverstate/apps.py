from django.apps import AppConfig


class ServerStateConfig(AppConfig):
    name = "serverstate"
    verbose_name = "Server-side state"
    default_auto_field = "django.db.models.BigAutoField"
