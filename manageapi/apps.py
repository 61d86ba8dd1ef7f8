from django.apps import AppConfig


class ManageApiConfig(AppConfig):
    name = "manageapi"
    verbose_name = "Management API"
    default_auto_field = "django.db.models.BigAutoField"
