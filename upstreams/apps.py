from django.apps import AppConfig


class UpstreamsConfig(AppConfig):
    name = "upstreams"
    verbose_name = "Upstreams"
    default_auto_field = "django.db.models.BigAutoField"
