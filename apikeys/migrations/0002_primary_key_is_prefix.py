# Keys created before this migration have the package's primary key `prefix.hash`; make it the prefix, so that
# no admin URL or log entry carries a hash (URLs travel on into access logs and Referer headers). References
# follow: on PostgreSQL the foreign keys are deferred to the end of the transaction, on SQLite the migration runs
# with constraint checks off.

from django.db import migrations
from django.db.models import F


def primary_key_to_prefix(apps, schema_editor):
    APIKey = apps.get_model("apikeys", "APIKey")
    UsageRecord = apps.get_model("completions", "UsageRecord")
    LogEntry = apps.get_model("admin", "LogEntry")
    ContentType = apps.get_model("contenttypes", "ContentType")
    content_type = ContentType.objects.filter(app_label="apikeys", model="apikey").first()
    for old, prefix in APIKey.objects.exclude(id=F("prefix")).values_list("id", "prefix"):
        APIKey.objects.filter(id=old).update(id=prefix)
        APIKey.objects.filter(predecessor_id=old).update(predecessor_id=prefix)
        UsageRecord.objects.filter(api_key_id=old).update(api_key_id=prefix)
        if content_type is not None:
            LogEntry.objects.filter(content_type=content_type, object_id=old).update(object_id=prefix)


class Migration(migrations.Migration):
    dependencies = [
        ("apikeys", "0001_initial"),
        ("completions", "0001_initial"),
        ("admin", "0003_logentry_add_action_flag_choices"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(primary_key_to_prefix, migrations.RunPython.noop)]
