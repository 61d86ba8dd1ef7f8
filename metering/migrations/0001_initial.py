# Takes over the table of completions.LimitCounter with every row (completions/0005) and renames it.

from django.db import migrations, models


def move_content_types(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.using(schema_editor.connection.alias).filter(
        app_label="completions", model="limitcounter"
    ).update(app_label="metering")


def restore_content_types(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.using(schema_editor.connection.alias).filter(app_label="metering", model="limitcounter").update(
        app_label="completions"
    )


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("completions", "0005_models_move_to_usage_and_metering"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="LimitCounter",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("name", models.CharField(max_length=200, unique=True)),
                        (
                            "scope",
                            models.CharField(
                                blank=True, db_index=True, help_text="Groups in-flight rows by key.", max_length=100
                            ),
                        ),
                        ("value", models.BigIntegerField(default=0)),
                        (
                            "window_end",
                            models.FloatField(default=0, help_text="Epoch seconds at which this window's count resets."),
                        ),
                    ],
                    options={"db_table": "completions_limitcounter"},
                ),
            ],
            database_operations=[],
        ),
        migrations.AlterModelTable(name="limitcounter", table=None),
        migrations.RunPython(move_content_types, restore_content_types),
    ]
