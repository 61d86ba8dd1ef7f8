# Takes over the tables of completions.UsageRecord and completions.ModelPrice with every row (completions/0005),
# then renames them to this app's names. Content types (and so permissions and admin log entries) move along.

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

MOVED = ("usagerecord", "modelprice")


def move_content_types(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.using(schema_editor.connection.alias).filter(app_label="completions", model__in=MOVED).update(
        app_label="usage"
    )


def restore_content_types(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.using(schema_editor.connection.alias).filter(app_label="usage", model__in=MOVED).update(
        app_label="completions"
    )


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("apikeys", "0003_key_lineage"),
        ("completions", "0005_models_move_to_usage_and_metering"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="ModelPrice",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("model", models.CharField(max_length=100)),
                        ("input_per_million", models.DecimalField(decimal_places=4, max_digits=12)),
                        ("output_per_million", models.DecimalField(decimal_places=4, max_digits=12)),
                        ("max_output_tokens", models.PositiveIntegerField(default=16384)),
                        ("effective_from", models.DateTimeField(default=django.utils.timezone.now)),
                    ],
                    options={
                        "db_table": "completions_modelprice",
                        "ordering": ("model", "-effective_from"),
                        "constraints": [
                            models.UniqueConstraint(fields=("model", "effective_from"), name="uniq_price_model_from")
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="UsageRecord",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("created_at", models.DateTimeField(db_index=True, default=django.utils.timezone.now)),
                        ("request_id", models.CharField(max_length=64, unique=True)),
                        ("key_prefix", models.CharField(db_index=True, max_length=8)),
                        ("key_name", models.CharField(blank=True, max_length=50)),
                        ("model", models.CharField(blank=True, max_length=100)),
                        ("status", models.PositiveSmallIntegerField()),
                        ("error_type", models.CharField(blank=True, max_length=40)),
                        ("streamed", models.BooleanField(default=False)),
                        ("prompt_tokens", models.PositiveIntegerField(default=0)),
                        ("completion_tokens", models.PositiveIntegerField(default=0)),
                        ("total_tokens", models.PositiveIntegerField(default=0)),
                        (
                            "usage_estimated",
                            models.BooleanField(default=False, help_text="Tokens estimated: the upstream reported none."),
                        ),
                        ("cost_usd", models.DecimalField(decimal_places=8, default=0, max_digits=14)),
                        ("latency_ms", models.FloatField(default=0)),
                        ("ttfb_ms", models.FloatField(blank=True, null=True)),
                        ("upstream_request_id", models.CharField(blank=True, max_length=128)),
                        (
                            "api_key",
                            models.ForeignKey(
                                db_constraint=False,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="usage",
                                to="apikeys.apikey",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "completions_usagerecord",
                        "ordering": ("-created_at",),
                        "indexes": [
                            models.Index(fields=["key_prefix", "created_at"], name="completions_key_pre_833287_idx"),
                            models.Index(fields=["model", "created_at"], name="completions_model_f31c79_idx"),
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.AlterModelTable(name="modelprice", table=None),
        migrations.AlterModelTable(name="usagerecord", table=None),
        migrations.RunPython(move_content_types, restore_content_types),
    ]
