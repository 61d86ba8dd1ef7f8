"""Reads of server-side state (see `serverstate.models`)."""

from collections.abc import Iterable

from .models import OwnedObject


def owned_objects_find(*, lineage: str, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], OwnedObject]:
    """The objects of `wanted` ((kind, id) pairs) that `lineage` owns, by (kind, id). One query."""
    wanted = list(wanted)
    if not wanted:
        return {}
    ids = {object_id for _, object_id in wanted}
    found = OwnedObject.objects.filter(lineage=lineage, object_id__in=ids)
    return {(row.kind, row.object_id): row for row in found if (row.kind, row.object_id) in set(wanted)}
