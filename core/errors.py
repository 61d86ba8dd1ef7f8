"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, on every path.

`OpenAIError` subclasses are raised by our code; `openai_exception_handler` (DRF's EXCEPTION_HANDLER) renders
them and DRF's own exceptions alike; `json_404`/`json_500`… are Django's handlers for everything outside DRF.
"""

import logging

import orjson
from django.http import Http404, HttpResponse
from rest_framework import exceptions as drf_exceptions

from .outcome import ErrorType

logger = logging.getLogger("tollgate.errors")


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_body_bytes(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps(error_body(message, type_, param, code))


def error_response(status: int, message: str, type_: str, param=None, code=None, headers=None) -> HttpResponse:
    response = HttpResponse(
        error_body_bytes(message, type_, param, code), status=status, content_type="application/json"
    )
    for name, value in (headers or {}).items():
        response[name] = value
    return response


class OpenAIError(drf_exceptions.APIException):
    """Base for errors Tollgate answers itself. Subclasses set status, type and code; `headers` are added."""

    status_code = 500
    error_type = "server_error"
    error_code: str | None = None
    # What the request's outcome records when this error ends it (core.outcome.ErrorType).
    outcome_error_type = ErrorType.SERVER_ERROR
    # The upstream's `x-request-id`, for errors that came from an upstream answer.
    upstream_request_id = ""
    # For an upstream's failure that another upstream may not have (`connect`, `timeout`, `5xx`, `429`): the relay
    # sends the request on to the next upstream while nothing has reached the client. None: the answer stands.
    failover: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, headers=None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.error_code = code
        self.headers = dict(headers or {})

    def as_response(self) -> HttpResponse:
        return error_response(
            self.status_code, self.message, self.error_type, self.param, self.error_code, self.headers
        )


class InvalidRequest(OpenAIError):
    status_code = 400
    error_type = "invalid_request_error"
    outcome_error_type = ErrorType.INVALID_REQUEST


class InvalidAPIKey(OpenAIError, drf_exceptions.AuthenticationFailed):
    """401. Also an AuthenticationFailed, so that DRF adds the WWW-Authenticate header."""

    status_code = 401
    error_type = "invalid_request_error"
    error_code = "invalid_api_key"


class ModelNotFound(OpenAIError):
    status_code = 404
    error_type = "invalid_request_error"
    error_code = "model_not_found"
    outcome_error_type = ErrorType.MODEL_NOT_ALLOWED


class ObjectNotFound(OpenAIError):
    """404 for an id the key's lineage does not own: an unknown id and another key's id answer the same."""

    status_code = 404
    error_type = "invalid_request_error"
    outcome_error_type = ErrorType.NOT_OWNED


class ToolNotAllowed(OpenAIError):
    """403 for a request naming a hosted tool type the key may not use (`param: "tools"`)."""

    status_code = 403
    error_type = "invalid_request_error"
    error_code = "tool_not_allowed"
    outcome_error_type = ErrorType.TOOL_NOT_ALLOWED


class RateLimited(OpenAIError):
    """429 for a request, token or concurrency limit. `error_type` is set per instance (`requests`/`tokens`)."""

    status_code = 429
    error_code = "rate_limit_exceeded"
    outcome_error_type = ErrorType.RATE_LIMIT_REQUESTS  # the limiter sets the precise one on the outcome

    def __init__(self, message: str, *, limit_type: str, headers=None):
        super().__init__(message, headers=headers)
        self.error_type = limit_type


class QuotaExceeded(OpenAIError):
    """429 for a spent budget. `x-should-retry: false` stops the SDK from retrying something that cannot pass."""

    status_code = 429
    error_type = "insufficient_quota"
    error_code = "insufficient_quota"
    outcome_error_type = ErrorType.BUDGET

    def __init__(self, message: str, *, headers=None):
        super().__init__(message, headers={"x-should-retry": "false", **(headers or {})})


class ServiceUnavailable(OpenAIError):
    status_code = 503
    error_type = "server_error"
    error_code = "service_unavailable"
    outcome_error_type = ErrorType.SERVICE_UNAVAILABLE


class UpstreamError(OpenAIError):
    """The upstream failed in a way that is not the client's fault (5xx, bad key of ours, garbage, refused)."""

    status_code = 502
    error_type = "server_error"
    error_code = "upstream_error"
    outcome_error_type = ErrorType.UPSTREAM_ERROR


class UpstreamTimeout(OpenAIError):
    status_code = 504
    error_type = "server_error"
    error_code = "upstream_timeout"
    outcome_error_type = ErrorType.UPSTREAM_TIMEOUT


# DRF's own exceptions, mapped to OpenAI's types and codes.
_DRF_MAP = {
    drf_exceptions.NotAuthenticated: ("invalid_request_error", "invalid_api_key"),
    drf_exceptions.AuthenticationFailed: ("invalid_request_error", "invalid_api_key"),
    drf_exceptions.ParseError: ("invalid_request_error", "invalid_json"),
    drf_exceptions.MethodNotAllowed: ("invalid_request_error", "method_not_allowed"),
    drf_exceptions.NotFound: ("invalid_request_error", "not_found"),
    drf_exceptions.UnsupportedMediaType: ("invalid_request_error", "unsupported_media_type"),
    drf_exceptions.NotAcceptable: ("invalid_request_error", "not_acceptable"),
    drf_exceptions.PermissionDenied: ("invalid_request_error", "permission_denied"),
    drf_exceptions.Throttled: ("requests", "rate_limit_exceeded"),
    drf_exceptions.ValidationError: ("invalid_request_error", None),
}


def _flatten_detail(detail) -> tuple[str, str | None]:
    """A DRF detail (str, list or dict) as one message, with the first offending field as `param`."""
    if isinstance(detail, dict):
        for field, value in detail.items():
            message, inner = _flatten_detail(value)
            return message, inner or (None if field == "non_field_errors" else str(field))
    if isinstance(detail, list) and detail:
        return _flatten_detail(detail[0])
    return str(detail), None


def openai_exception_handler(exc, context):
    """DRF's EXCEPTION_HANDLER: every exception leaves as an OpenAI-shaped JSON response.

    Unexpected exceptions become a 500 `server_error` (logged once with the request id, never with headers).
    """
    request = context.get("request")
    request_id = getattr(getattr(request, "_request", request), "request_id", "-")
    if isinstance(exc, OpenAIError):
        response = exc.as_response()
        auth_header = getattr(exc, "auth_header", None)
        if auth_header:
            response["WWW-Authenticate"] = auth_header
    elif isinstance(exc, Http404):
        response = error_response(404, "Not found.", "invalid_request_error", None, "not_found")
    elif isinstance(exc, drf_exceptions.APIException):
        type_, code = next(
            ((t, c) for cls, (t, c) in _DRF_MAP.items() if isinstance(exc, cls)), ("invalid_request_error", None)
        )
        message, param = _flatten_detail(exc.detail)
        headers = {}
        wait = getattr(exc, "wait", None)  # DRF's Throttled
        if isinstance(exc, drf_exceptions.Throttled) and wait is not None:
            headers["Retry-After"] = str(max(1, int(wait + 0.999)))
        response = error_response(exc.status_code, message, type_, param, code, headers)
        auth_header = getattr(exc, "auth_header", None)
        if auth_header:
            response["WWW-Authenticate"] = auth_header
    else:
        logger.exception("unhandled error request_id=%s", request_id)
        return error_response(500, "The server had an error while processing your request.", "server_error")
    if response.status_code >= 500:
        logger.error("request_id=%s status=%s %s", request_id, response.status_code, _message_of(response))
    if response.status_code == 401:
        _report_auth_failure(request, exc)
    return response


# Called as fn(request, exc) for every 401 rendered above: metrics and the request log register here (see
# core/apps.py). Authentication fails before a RequestOutcome exists, so outcome.REPORTERS never sees it.
AUTH_FAILURE_REPORTERS: list = []


def _report_auth_failure(request, exc) -> None:
    for reporter in AUTH_FAILURE_REPORTERS:
        try:
            reporter(request, exc)
        except Exception:
            logger.exception("auth failure reporter %s failed", reporter.__qualname__)


def _message_of(response) -> str:
    try:
        return orjson.loads(response.content)["error"]["message"]
    except Exception:
        return ""


# Django's handlers for what never reaches a DRF view (unknown URLs, crashes outside DRF).


def json_400(request, exception=None):
    return error_response(400, "Bad request.", "invalid_request_error")


def json_403(request, exception=None):
    return error_response(403, "Forbidden.", "invalid_request_error", code="permission_denied")


def json_404(request, exception=None):
    return error_response(
        404, f"Unknown request URL: {request.method} {request.path}.", "invalid_request_error", code="unknown_url"
    )


def json_500(request):
    return error_response(500, "The server had an error while processing your request.", "server_error")
