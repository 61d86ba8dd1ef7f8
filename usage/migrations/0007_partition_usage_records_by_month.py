"""PostgreSQL: the usage records become a table partitioned by month on `created_at` (SQLite: nothing to do).

The table is rebuilt under its name: the old one is renamed, a partitioned one is created with the same columns,
defaults and checks, a partition for every month that has records plus this month and the next (and the default
partition), every row is copied, the old table dropped, then the keys and indexes are recreated: the primary key
becomes (id, created_at) (a partitioned table's keys must include the partition key; `id` stays unique, drawn from
one sequence, and remains Django's pk), and the other indexes are recreated as they were, under their names.
The whole migration is one transaction: the table is locked while it runs, about a minute per 10 million rows.
Backwards: the same rebuild into a plain table.
"""

from datetime import UTC, datetime

from django.db import migrations

TABLE = "usage_usagerecord"
OLD = "usage_usagerecord_unpartitioned"


def _rebuild(cursor, *, partitioned: bool) -> None:
    from usage.partitions import DEFAULT_PARTITION, create_partition, month_start, next_month, partition_for

    cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
    if (cursor.fetchone()[0] == "p") == partitioned:
        return
    # The secondary indexes as they are (keys and unique constraints are recreated below with created_at).
    cursor.execute(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = %s AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname AND c.conrelid = to_regclass(%s))",
        [TABLE, TABLE],
    )
    indexes = cursor.fetchall()
    cursor.execute(f"ALTER TABLE {TABLE} RENAME TO {OLD}")
    cursor.execute(
        f"CREATE TABLE {TABLE} (LIKE {OLD} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)"
        + (" PARTITION BY RANGE (created_at)" if partitioned else "")
    )
    # Its id default (when there is one: a sequence, not identity) is the old table's: a fresh sequence follows.
    cursor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN id DROP DEFAULT")
    if partitioned:
        cursor.execute(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF {TABLE} DEFAULT")
        cursor.execute(f"SELECT min(created_at) FROM {OLD}")  # noqa: S608
        first = cursor.fetchone()[0]
        now = datetime.now(UTC)
        start = month_start(min(first, now) if first else now)
        last = next_month(month_start(now))
        while start <= last:
            create_partition(cursor, partition_for(start))
            start = next_month(start)
    cursor.execute(f"INSERT INTO {TABLE} SELECT * FROM {OLD}")  # noqa: S608
    cursor.execute(f"SELECT COALESCE(max(id), 0) + 1 FROM {OLD}")  # noqa: S608
    next_id = cursor.fetchone()[0]
    cursor.execute(f"DROP TABLE {OLD}")  # its identity sequence goes with it
    cursor.execute(f"CREATE SEQUENCE {TABLE}_id_seq START WITH {int(next_id)} OWNED BY {TABLE}.id")
    cursor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN id SET DEFAULT nextval('{TABLE}_id_seq')")
    key = "(id, created_at)" if partitioned else "(id)"
    cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY {key}")
    cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT usage_request_once UNIQUE (request_id, created_at)")
    for _name, definition in indexes:  # read before the rename: they name the table's own name
        if "varchar_pattern_ops" in definition:
            # LIKE-pattern indexes: request_id's and key_prefix's were left behind when 0006 made request_id
            # non-unique and key_prefix unindexed (Django looked for them under the table's later name), and
            # api_key_id's comes with any foreign key to a text key. Nothing queries these columns by pattern, and
            # every index costs the usage writer on every insert.
            continue
        cursor.execute(definition)


def partition(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            _rebuild(cursor, partitioned=True)


def unpartition(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            _rebuild(cursor, partitioned=False)


class Migration(migrations.Migration):
    dependencies = [("usage", "0006_usage_rollups_request_once")]

    operations = [migrations.RunPython(partition, unpartition)]
