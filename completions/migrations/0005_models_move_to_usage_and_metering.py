# The relay app's models moved by concern: usage records and prices to `usage`, limit counters to `metering`.
# Only Django's state changes here; the tables (and every row) stay, and are taken over by usage/0001 and
# metering/0001.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("completions", "0004_usage_key_without_db_constraint"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="UsageRecord"),
                migrations.DeleteModel(name="ModelPrice"),
                migrations.DeleteModel(name="LimitCounter"),
            ],
            database_operations=[],
        ),
    ]
