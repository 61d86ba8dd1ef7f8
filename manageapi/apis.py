"""The management API (`/api/manage/v1/`): keys, teams and usage for automation, authenticated by management tokens.

Thin views: every change is a call into `apikeys.services` (the admin's and the commands' services), audited with
the actor `token:<name>`. A token scoped to a team sees only that team's keys and team (another team's is a 404)
and cannot create or change teams (403). Errors are OpenAI-shaped like on `/v1/` (`core.errors`).
"""

from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from apikeys.models import APIKey, Team
from apikeys.selectors import api_key_row, team_list, team_row
from apikeys.services import (
    DEFAULT_ROTATION_GRACE,
    KeyInputError,
    KeyStateError,
    api_key_create,
    api_key_revoke,
    api_key_rotate,
    api_key_update,
    team_create,
    team_update,
)
from completions.schema import ErrorResponseSerializer
from core.errors import OpenAIError
from usage.endpoint_names import known_endpoints
from usage.selectors import day_bounds, team_key_prefixes, usage_endpoint_known, usage_report_rows

from .authentication import ManagementTokenAuthentication
from .serializers import (
    KeyInputSerializer,
    KeySerializer,
    KeyWithSecretSerializer,
    RotatedKeySerializer,
    RotateInputSerializer,
    TeamInputSerializer,
    TeamSerializer,
    UsageRowSerializer,
)
from .services import (
    idempotent_create_find,
    idempotent_create_secret,
    idempotent_create_store,
    request_fingerprint,
)

# API field -> service argument, where they differ.
KEY_FIELDS = {"models": "allowed_models"}
TEAM_FIELDS = {"models": "allowed_models"}


class Conflict(OpenAIError):
    """409: the key cannot take this step now (revoked, already rotated), or an Idempotency-Key was reused."""

    status_code = 409
    error_type = "invalid_request_error"
    error_code = "conflict"


def _errors(*statuses: int) -> dict:
    described = {
        400: "Invalid body or parameter.",
        401: "No management token, or not a valid one (a gateway key is not one).",
        403: "The token is scoped to a team and this is outside it.",
        404: "No such key or team (or it belongs to another team than the token's).",
        409: "The key cannot take this step now, or the Idempotency-Key was used for another body.",
    }
    return {status: OpenApiResponse(ErrorResponseSerializer, description=described[status]) for status in statuses}


PREFIX = OpenApiParameter("prefix", OpenApiTypes.STR, OpenApiParameter.PATH, description="The key's prefix.")
TEAM_NAME = OpenApiParameter("name", OpenApiTypes.STR, OpenApiParameter.PATH, description="The team's name.")
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Retrying a create with the same key (and body) within 24 h returns the first answer and creates "
    "nothing new.",
)


class ManagementApi(APIView):
    authentication_classes = [ManagementTokenAuthentication]
    permission_classes = [IsAuthenticated]

    @property
    def token(self):
        return self.request.auth

    def actor(self) -> str:
        return f"token:{self.token.name}"

    def keys(self) -> QuerySet:
        keys = APIKey.objects.select_related("team", "predecessor")
        return keys.filter(team=self.token.team) if self.token.team_id else keys

    def teams(self) -> QuerySet:
        return Team.objects.filter(pk=self.token.team_id) if self.token.team_id else Team.objects.all()

    def get_key(self, prefix: str) -> APIKey:
        return get_object_or_404(self.keys(), prefix=prefix)

    def resolve_team(self, name) -> Team | None:
        """The team named in a body (None for null); a scoped token may only name its own (403 otherwise)."""
        if name is None:
            if self.token.team_id:
                raise exceptions.PermissionDenied(f"This token manages only team {self.token.team.name}'s keys.")
            return None
        team = Team.objects.filter(name=name).first()
        if team is None:
            raise exceptions.ValidationError({"team": [f"No team is named {name!r}."]})
        if self.token.team_id and team.pk != self.token.team_id:
            raise exceptions.PermissionDenied(f"This token manages only team {self.token.team.name}'s keys.")
        return team


def key_answer(api_key: APIKey, **extra) -> dict:
    row = api_key_row(api_key)
    return {
        "prefix": row.prefix,
        "name": row.name,
        "team": row.team,
        "owner": row.owner,
        "notes": row.notes,
        "status": row.status,
        "rpm": row.rpm,
        "tpm": row.tpm,
        "max_concurrent": row.max_concurrent,
        "models": row.allowed_models,
        "expires": row.expires,
        "budget_usd": row.budget_usd,
        "budget_period": row.budget_period,
        "alert_thresholds": row.alert_thresholds,
        "created": row.created,
        "valid_until": row.valid_until,
        "revoked_at": row.revoked_at,
        "last_used_at": row.last_used_at,
        "predecessor": row.predecessor,
        "successor": row.successor,
        **extra,
    }


def team_answer(team: Team) -> dict:
    row = team_row(team)
    return {
        "name": row.name,
        "notes": row.notes,
        "rpm": row.rpm,
        "tpm": row.tpm,
        "max_concurrent": row.max_concurrent,
        "models": row.models,
        "budget_usd": row.budget_usd,
        "budget_period": row.budget_period,
        "alert_thresholds": row.alert_thresholds,
        "keys": row.keys,
        "admins": row.admins,
        "created": row.created,
    }


def _service_args(data: dict, renames: dict) -> dict:
    return {renames.get(field, field): value for field, value in data.items()}


def _input_error(exc: KeyInputError) -> exceptions.ValidationError:
    field = {"allowed_models": "models"}.get(exc.field, exc.field)
    return exceptions.ValidationError({field: [str(exc)]})


@extend_schema(tags=["management: keys"])
class KeyListCreateApi(ManagementApi):
    @extend_schema(
        summary="List keys",
        description="Every key the token may see (a team-scoped token: its team's), newest first.",
        responses={200: KeySerializer(many=True), **_errors(401)},
    )
    def get(self, request):
        return Response([key_answer(key) for key in self.keys().order_by("-created", "prefix")])

    @extend_schema(
        summary="Create a key",
        description="Answers the key with its raw value under `key`, once. A team-scoped token creates keys in its "
        "team only (`team` may be left out).",
        parameters=[IDEMPOTENCY_KEY],
        request=KeyInputSerializer,
        responses={201: KeyWithSecretSerializer, **_errors(400, 401, 403, 409)},
    )
    def post(self, request):
        idempotency_key = request.headers.get("Idempotency-Key", "").strip()
        fingerprint = request_fingerprint(request.body)
        if idempotency_key:
            replay = self.replay(idempotency_key, fingerprint)
            if replay is not None:
                return replay
        data = _validated(KeyInputSerializer, request.data)
        if "team" in data:
            team = self.resolve_team(data.pop("team"))
        else:
            team = self.token.team if self.token.team_id else None
        try:
            with transaction.atomic():
                api_key, raw = api_key_create(actor=self.actor(), team=team, **_service_args(data, KEY_FIELDS))
                body = key_answer(api_key)
                if idempotency_key:
                    idempotent_create_store(
                        token=self.token,
                        key=idempotency_key,
                        fingerprint=fingerprint,
                        status=201,
                        body=body,
                        secret=raw,
                    )
        except KeyInputError as exc:
            raise _input_error(exc) from None
        except IntegrityError:
            # A concurrent request with the same Idempotency-Key won; this one created nothing (rolled back).
            replay = self.replay(idempotency_key, fingerprint)
            if replay is None:
                raise
            return replay
        return Response({**body, "key": raw}, status=201)

    def replay(self, idempotency_key: str, fingerprint: str) -> Response | None:
        record = idempotent_create_find(token=self.token, key=idempotency_key)
        if record is None:
            return None
        if record.request_hash != fingerprint:
            raise Conflict("This Idempotency-Key was used for a different request body.")
        return Response(
            {**record.body, "key": idempotent_create_secret(record)},
            status=record.status,
            headers={"Idempotent-Replayed": "true"},
        )


@extend_schema(tags=["management: keys"], parameters=[PREFIX])
class KeyDetailApi(ManagementApi):
    @extend_schema(summary="Get a key", responses={200: KeySerializer, **_errors(401, 404)})
    def get(self, request, prefix: str):
        return Response(key_answer(self.get_key(prefix)))

    @extend_schema(
        summary="Change a key",
        description="Any of the create fields; only what is sent changes. A revoked key's notes and owner only.",
        request=KeyInputSerializer(partial=True),
        responses={200: KeySerializer, **_errors(400, 401, 403, 404, 409)},
    )
    def patch(self, request, prefix: str):
        api_key = self.get_key(prefix)
        data = _validated(KeyInputSerializer, request.data, partial=True)
        if "team" in data:
            data["team"] = self.resolve_team(data["team"])
        try:
            api_key = api_key_update(api_key=api_key, actor=self.actor(), **_service_args(data, KEY_FIELDS))
        except KeyInputError as exc:
            raise _input_error(exc) from None
        except KeyStateError as exc:
            raise Conflict(str(exc)) from None
        return Response(key_answer(api_key))


@extend_schema(tags=["management: keys"], parameters=[PREFIX])
class KeyRotateApi(ManagementApi):
    @extend_schema(
        summary="Rotate a key",
        description="Creates its successor (same settings) and answers it with the raw key under `key`, once; the "
        "old key keeps working for `grace` seconds (default 3600; 0 stops it at once).",
        request=RotateInputSerializer,
        responses={201: RotatedKeySerializer, **_errors(400, 401, 404, 409)},
    )
    def post(self, request, prefix: str):
        api_key = self.get_key(prefix)
        data = _validated(RotateInputSerializer, request.data)
        grace = timedelta(seconds=data["grace"]) if "grace" in data else DEFAULT_ROTATION_GRACE
        try:
            successor, raw = api_key_rotate(api_key=api_key, grace=grace, actor=self.actor())
        except KeyInputError as exc:
            raise _input_error(exc) from None
        except KeyStateError as exc:
            raise Conflict(str(exc)) from None
        old = api_key_row(APIKey.objects.get(pk=api_key.pk))
        return Response(
            key_answer(successor, key=raw, old_prefix=old.prefix, old_key_valid_until=old.valid_until), status=201
        )


@extend_schema(tags=["management: keys"], parameters=[PREFIX])
class KeyRevokeApi(ManagementApi):
    @extend_schema(
        summary="Revoke a key",
        description="For good; every instance refuses it within a second.",
        request=None,
        responses={200: KeySerializer, **_errors(401, 404, 409)},
    )
    def post(self, request, prefix: str):
        api_key = self.get_key(prefix)
        try:
            api_key = api_key_revoke(api_key=api_key, actor=self.actor())
        except KeyStateError as exc:
            raise Conflict(str(exc)) from None
        return Response(key_answer(api_key))


@extend_schema(tags=["management: teams"])
class TeamListCreateApi(ManagementApi):
    @extend_schema(summary="List teams", responses={200: TeamSerializer(many=True), **_errors(401)})
    def get(self, request):
        return Response([team_answer(team) for team in team_list(teams=self.teams())])

    @extend_schema(
        summary="Create a team",
        description="Unscoped tokens only.",
        request=TeamInputSerializer,
        responses={201: TeamSerializer, **_errors(400, 401, 403)},
    )
    def post(self, request):
        self.refuse_if_scoped()
        data = _validated(TeamInputSerializer, request.data)
        try:
            team = team_create(actor=self.actor(), **_service_args(data, TEAM_FIELDS))
        except KeyInputError as exc:
            raise _input_error(exc) from None
        return Response(team_answer(team), status=201)

    def refuse_if_scoped(self):
        if self.token.team_id:
            raise exceptions.PermissionDenied("A team-scoped token cannot create or change teams.")


@extend_schema(tags=["management: teams"], parameters=[TEAM_NAME])
class TeamDetailApi(ManagementApi):
    @extend_schema(summary="Get a team", responses={200: TeamSerializer, **_errors(401, 404)})
    def get(self, request, name: str):
        return Response(team_answer(get_object_or_404(self.teams(), name=name)))

    @extend_schema(
        summary="Change a team",
        description="Unscoped tokens only. Every key of the team follows within a second.",
        request=TeamInputSerializer(partial=True),
        responses={200: TeamSerializer, **_errors(400, 401, 403, 404)},
    )
    def patch(self, request, name: str):
        team = get_object_or_404(self.teams(), name=name)
        if self.token.team_id:
            raise exceptions.PermissionDenied("A team-scoped token cannot create or change teams.")
        data = _validated(TeamInputSerializer, request.data, partial=True)
        try:
            team = team_update(team=team, actor=self.actor(), **_service_args(data, TEAM_FIELDS))
        except KeyInputError as exc:
            raise _input_error(exc) from None
        return Response(team_answer(team))


class UsageQuerySerializer(serializers.Serializer):
    key = serializers.CharField(required=False, help_text="A key prefix.")
    team = serializers.CharField(required=False, help_text="A team's name: its keys only.")
    since = serializers.DateField(required=False, help_text="First UTC day, inclusive (YYYY-MM-DD).")
    until = serializers.DateField(required=False, help_text="Last UTC day, inclusive (YYYY-MM-DD).")
    endpoint = serializers.CharField(required=False, help_text=f"One of {', '.join(known_endpoints())}.")
    by_endpoint = serializers.BooleanField(required=False, default=False)


@extend_schema(tags=["management: usage"])
class UsageApi(ManagementApi):
    @extend_schema(
        summary="Usage totals",
        description="The rows of `manage.py usage_report --format json`, with the same filters as query parameters.",
        parameters=[UsageQuerySerializer],
        responses={200: UsageRowSerializer(many=True), **_errors(400, 401, 404)},
    )
    def get(self, request):
        query = _validated(UsageQuerySerializer, request.query_params)
        since, until = query.get("since"), query.get("until")
        if since and until and since > until:
            raise exceptions.ValidationError({"since": [f"since {since} is after until {until}."]})
        endpoint = query.get("endpoint")
        if endpoint is not None and not usage_endpoint_known(endpoint):
            raise exceptions.ValidationError({"endpoint": [f"Unknown endpoint {endpoint!r}."]})
        key_prefixes = team_key_prefixes(self.token.team) if self.token.team_id else None
        if "team" in query:
            team = get_object_or_404(self.teams(), name=query["team"])
            key_prefixes = team_key_prefixes(team)
        key_prefix = None
        if "key" in query:
            key_prefix = self.get_key(query["key"].partition(".")[0]).prefix
        first, last = day_bounds(since, until)
        rows = usage_report_rows(
            key_prefix=key_prefix,
            key_prefixes=key_prefixes,
            endpoint=endpoint,
            by_endpoint=query["by_endpoint"],
            since=first,
            until=last,
        )
        return Response(rows)


def _validated(serializer_class, data, *, partial: bool = False) -> dict:
    serializer = serializer_class(data=data, partial=partial)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)
