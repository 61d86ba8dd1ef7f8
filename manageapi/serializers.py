"""The management API's bodies and answers. Field names are the commands' flags (`rpm`, `max_concurrent`,
`models`, `expires`, `budget_usd`, …). Input serializers only shape and type-check: the rules are the services'
(`apikeys.services`), so the admin, the commands and this API refuse exactly the same things."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import serializers

PERIODS = ("day", "month", "total")


class ManagementTokenScheme(OpenApiAuthenticationExtension):
    """`manageapi.authentication.ManagementTokenAuthentication` as an HTTP bearer security scheme."""

    target_class = "manageapi.authentication.ManagementTokenAuthentication"
    name = "managementToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A management token (`manage.py create_management_token`), never a gateway key.",
        }


class KeyInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=50)
    team = serializers.CharField(required=False, allow_null=True, help_text="The team's name; null: no team.")
    owner = serializers.CharField(required=False, allow_blank=True, max_length=200)
    notes = serializers.CharField(required=False, allow_blank=True)
    rpm = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    tpm = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    max_concurrent = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    models = serializers.ListField(child=serializers.CharField(), required=False, help_text="Empty: every model.")
    expires = serializers.DateTimeField(required=False, allow_null=True)
    budget_usd = serializers.DecimalField(
        max_digits=12, decimal_places=4, required=False, allow_null=True, coerce_to_string=True
    )
    budget_period = serializers.ChoiceField(choices=PERIODS, required=False)
    alert_thresholds = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=1000), required=False
    )


class KeySerializer(serializers.Serializer):
    """A key as the API answers it (never its hash)."""

    prefix = serializers.CharField()
    name = serializers.CharField()
    team = serializers.CharField(allow_null=True)
    owner = serializers.CharField()
    notes = serializers.CharField()
    status = serializers.ChoiceField(choices=("active", "expiring_soon", "in_grace", "expired", "revoked"))
    rpm = serializers.IntegerField(allow_null=True)
    tpm = serializers.IntegerField(allow_null=True)
    max_concurrent = serializers.IntegerField(allow_null=True)
    models = serializers.ListField(child=serializers.CharField())
    expires = serializers.DateTimeField(allow_null=True)
    budget_usd = serializers.CharField(allow_null=True, help_text="USD, a decimal string.")
    budget_period = serializers.ChoiceField(choices=PERIODS)
    alert_thresholds = serializers.ListField(child=serializers.IntegerField())
    created = serializers.DateTimeField()
    valid_until = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    predecessor = serializers.CharField(allow_null=True)
    successor = serializers.CharField(allow_null=True)


class KeyWithSecretSerializer(KeySerializer):
    key = serializers.CharField(help_text="The raw key, shown in this answer only (and to a replayed retry).")


class RotatedKeySerializer(KeyWithSecretSerializer):
    old_prefix = serializers.CharField()
    old_key_valid_until = serializers.DateTimeField()


class RotateInputSerializer(serializers.Serializer):
    grace = serializers.IntegerField(
        required=False, min_value=0, max_value=366 * 86400, help_text="Seconds the old key keeps working (3600)."
    )


class TeamInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    notes = serializers.CharField(required=False, allow_blank=True)
    rpm = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    tpm = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    max_concurrent = serializers.IntegerField(required=False, allow_null=True, min_value=0)
    models = serializers.ListField(child=serializers.CharField(), required=False)
    budget_usd = serializers.DecimalField(
        max_digits=12, decimal_places=4, required=False, allow_null=True, coerce_to_string=True
    )
    budget_period = serializers.ChoiceField(choices=PERIODS, required=False)
    alert_thresholds = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=1000), required=False
    )


class TeamSerializer(serializers.Serializer):
    name = serializers.CharField()
    notes = serializers.CharField()
    rpm = serializers.IntegerField(allow_null=True)
    tpm = serializers.IntegerField(allow_null=True)
    max_concurrent = serializers.IntegerField(allow_null=True)
    models = serializers.ListField(child=serializers.CharField())
    budget_usd = serializers.CharField(allow_null=True)
    budget_period = serializers.ChoiceField(choices=PERIODS)
    alert_thresholds = serializers.ListField(child=serializers.IntegerField())
    keys = serializers.IntegerField(help_text="How many keys the team has (any status).")
    admins = serializers.ListField(child=serializers.CharField())
    created = serializers.DateTimeField(allow_null=True)


class UsageRowSerializer(serializers.Serializer):
    key_name = serializers.CharField()
    key_prefix = serializers.CharField()
    model = serializers.CharField()
    endpoint = serializers.CharField(required=False, help_text="With by_endpoint=true only.")
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cost_usd = serializers.CharField(help_text="USD with exactly 8 decimals.")
