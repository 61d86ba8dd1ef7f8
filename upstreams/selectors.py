"""Reads of upstreams (see `upstreams.models`)."""

from .models import Upstream, UpstreamAuditEntry


def upstream_get(*, name: str) -> Upstream | None:
    return Upstream.objects.filter(name=name).first()


def upstream_list() -> list[Upstream]:
    return list(Upstream.objects.order_by("-priority", "name"))


def upstream_row(upstream: Upstream) -> dict:
    """What `list_upstreams --json` prints for one upstream: everything but its key."""
    return {
        "name": upstream.name,
        "kind": upstream.kind,
        "base_url": upstream.base_url,
        "api_version": upstream.api_version or None,
        "organization": upstream.organization or None,
        "project": upstream.project or None,
        "weight": upstream.weight,
        "priority": upstream.priority,
        "models": list(upstream.models),
        "aliases": dict(upstream.aliases),
        "rpm": upstream.rpm,
        "tpm": upstream.tpm,
        "enabled": upstream.enabled,
    }


def upstream_audit_entries(*, name: str, limit: int = 50) -> list[UpstreamAuditEntry]:
    return list(UpstreamAuditEntry.objects.filter(upstream_name=name)[:limit])
