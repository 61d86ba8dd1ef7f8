"""The OpenAPI description of the API (drf-spectacular): bearer auth, bodies, streaming, errors, limit headers.

The views read and forward raw bytes, so nothing here validates a request: these serializers only describe, for
`/api/schema/` and its Swagger UI, what `completions.validation` accepts and what the upstream answers. Keep them
true to both: a schema-driven fuzz test sends what they promise is valid. Every request object allows fields
beyond those listed (OpenAI adds parameters often; they are forwarded as they come). Types and ranges are
stated only where Tollgate checks them; the other fields are described but left open, for the upstream to judge.
"""

from django.core.validators import RegexValidator
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers

# A model name "must be a non-empty string" to `completions.validation`, which strips it with Python's `str.strip`:
# at least one character that is not whitespace, where Python's whitespace also counts U+001C-U+001F and U+0085,
# which the ECMA regex `\s` of JSON Schema does not (with a bare `\S`, a name of one U+001E was schema-valid and
# refused).
NOT_BLANK = RegexValidator(r"[^\s\x1c-\x1f\x85]")


class BearerAPIKeyScheme(OpenApiAuthenticationExtension):
    """`apikeys.authentication.BearerAPIKeyAuthentication` as an HTTP bearer security scheme."""

    target_class = "apikeys.authentication.BearerAPIKeyAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "A Tollgate API key (`prefix.secret`, issued by `manage.py create_api_key` or the admin), sent as "
                "`Authorization: Bearer <key>` exactly as the OpenAI SDKs send their key. Never in the query string."
            ),
        }


# Request


@extend_schema_field({})
class AnyJSONField(serializers.JSONField):
    """Any JSON value, forwarded unchanged (the upstream validates it)."""


class ChatMessageSerializer(serializers.Serializer):
    role = serializers.CharField(min_length=1, help_text="`system`, `developer`, `user`, `assistant` or `tool`.")
    content = AnyJSONField(
        required=False, help_text="Text, or an array of content parts (text, image_url, input_audio, file), or null."
    )
    name = AnyJSONField(required=False, help_text="A participant name (a string).")


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = serializers.BooleanField(
        required=False,
        allow_null=True,
        help_text="Add a last chunk with `usage` (and empty `choices`). Tollgate always asks the upstream for it "
        "and hides it unless you ask too.",
    )


class ChatCompletionCreateSerializer(serializers.Serializer):
    """The main fields of OpenAI's CreateChatCompletionRequest, with the ranges Tollgate checks."""

    model = serializers.CharField(
        validators=[NOT_BLANK], help_text="Model id, e.g. `gpt-4o-mini`; must be allowed for the key."
    )
    messages = serializers.ListField(child=ChatMessageSerializer(), min_length=1)
    stream = serializers.BooleanField(
        required=False, allow_null=True, help_text="`true`: the answer is a `text/event-stream` of chunks."
    )
    stream_options = StreamOptionsSerializer(
        required=False, allow_null=True, help_text="Only allowed with `stream: true`."
    )
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    n = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=128)
    # The upper bounds are the ones completions/validation.py enforces (schemathesis found the gap).
    max_tokens = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=2**31 - 1,
        help_text="Deprecated by OpenAI for max_completion_tokens.",
    )
    max_completion_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=2**31 - 1)
    presence_penalty = serializers.FloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    frequency_penalty = serializers.FloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    logprobs = serializers.BooleanField(required=False, allow_null=True)
    top_logprobs = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=20)
    seed = serializers.IntegerField(required=False, allow_null=True, min_value=-(2**63), max_value=2**63 - 1)
    store = serializers.BooleanField(required=False, allow_null=True)
    parallel_tool_calls = serializers.BooleanField(required=False, allow_null=True)
    stop = AnyJSONField(required=False, help_text="Up to 4 sequences (a string or an array of strings).")
    user = AnyJSONField(required=False, help_text="An end-user id (a string), for OpenAI's abuse monitoring.")
    tools = AnyJSONField(required=False)
    tool_choice = AnyJSONField(required=False)
    response_format = AnyJSONField(required=False)


# Responses (as the upstream sends them: Tollgate relays the bytes unchanged)


class ResponseMessageSerializer(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField(allow_null=True)
    refusal = serializers.CharField(required=False, allow_null=True)
    tool_calls = serializers.ListField(child=serializers.DictField(), required=False)


class ChoiceSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    message = ResponseMessageSerializer()
    finish_reason = serializers.CharField(
        allow_null=True, help_text="`stop`, `length`, `tool_calls`, `content_filter` or `function_call`."
    )
    logprobs = serializers.DictField(required=False, allow_null=True)


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class ChatCompletionSerializer(serializers.Serializer):
    """OpenAI's CreateChatCompletionResponse (`object: chat.completion`)."""

    id = serializers.CharField()
    object = serializers.CharField(help_text="Always `chat.completion`.")
    created = serializers.IntegerField(help_text="Unix time, seconds.")
    model = serializers.CharField()
    choices = ChoiceSerializer(many=True)
    usage = UsageSerializer(required=False)
    system_fingerprint = serializers.CharField(required=False, allow_null=True)
    service_tier = serializers.CharField(required=False, allow_null=True)


class ServerSentEventSerializer(serializers.Serializer):
    """One event of a streamed answer (OpenAPI 3.0 describes an event stream by the schema of each event)."""

    data = serializers.CharField(  # type: ignore[assignment]  # the SSE field, not Serializer.data
        allow_blank=True,
        help_text='A `chat.completion.chunk` as JSON; `{"error": {...}}` for a failure after the stream began; '
        "`[DONE]` last.",
    )
    event = serializers.CharField(required=False)
    id = serializers.CharField(required=False)
    retry = serializers.IntegerField(required=False)


class ModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(help_text="Always `model`.")
    created = serializers.IntegerField()
    owned_by = serializers.CharField()


class ModelListSerializer(serializers.Serializer):
    object = serializers.CharField(help_text="Always `list`.")
    data = ModelSerializer(many=True)  # type: ignore[assignment]  # OpenAI's list field, not Serializer.data


class ErrorSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField(help_text="e.g. `invalid_request_error`, `requests`, `tokens`, `server_error`.")
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True)


class ErrorResponseSerializer(serializers.Serializer):
    """OpenAI's error shape, on every error Tollgate answers."""

    error = ErrorSerializer()


# Headers

RATE_LIMIT_HEADERS = [
    OpenApiParameter(
        name=f"x-ratelimit-{part}-{kind}",
        type=OpenApiTypes.STR if part == "reset" else OpenApiTypes.INT,
        location=OpenApiParameter.HEADER,
        # After admission: on answers and on the 429 itself, never on a request refused before the limiter.
        response=[200, 429],
        description=description.format(kind=kind),
    )
    for kind in ("requests", "tokens")
    for part, description in (
        ("limit", "The key's {kind} per minute (present when the key has that limit)."),
        ("remaining", "How many {kind} are left in the current minute."),
        ("reset", "Time until the {kind} limit is fully available again, in OpenAI's form (`1s`, `6m0s`, `250ms`)."),
    )
]
RESPONSE_HEADERS = [
    OpenApiParameter(
        name="x-request-id",
        type=OpenApiTypes.STR,
        location=OpenApiParameter.HEADER,
        response=True,
        description="Tollgate's id for the request (`req_` + 32 hex digits), also in its log line.",
    ),
    *RATE_LIMIT_HEADERS,
    OpenApiParameter(
        name="retry-after",
        type=OpenApiTypes.INT,
        location=OpenApiParameter.HEADER,
        response=[429],
        description="Whole seconds until a retry can pass (rate limits).",
    ),
    OpenApiParameter(
        name="x-should-retry",
        type=OpenApiTypes.STR,
        location=OpenApiParameter.HEADER,
        response=[429],
        description="`false` when the key's budget is spent: the SDKs then do not retry.",
    ),
]


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorResponseSerializer, description=description)


AUTH_ERRORS = {
    401: _error("Missing, malformed, unknown, revoked or expired API key (code `invalid_api_key`)."),
    503: _error("Tollgate cannot check the key or its limits right now (code `service_unavailable`)."),
}
UPSTREAM_ERRORS = {
    500: _error("An unexpected error in Tollgate (type `server_error`)."),
    502: _error("The upstream failed, refused our credentials or sent an invalid answer (code `upstream_error`)."),
    504: _error("The upstream did not answer within OPENAI_TIMEOUT (code `upstream_timeout`)."),
}

OK_DESCRIPTION = (
    "Without `stream` (or `stream: false`): the completion as JSON. With `stream: true`: Server-Sent Events, "
    "one `data: <chat.completion.chunk JSON>` event per chunk, ended by "
    "`data: [DONE]`. With `stream_options.include_usage`, a last chunk with empty `choices` carries `usage`. "
    'A failure after the stream has started arrives as a last `data: {"error": {...}}` event.'
)

chat_completion_schema = extend_schema(
    summary="Create a chat completion",
    description=(
        "OpenAI's `POST /chat/completions`, relayed to the upstream after authentication, validation, the "
        "model allowlist, rate limits and budget. The body is forwarded unchanged (plus "
        "`stream_options.include_usage` for streams); the answer comes back unchanged. `/api/route` is the same "
        "endpoint under its original name."
    ),
    tags=["chat"],
    request=ChatCompletionCreateSerializer,
    parameters=RESPONSE_HEADERS,
    responses={
        (200, "application/json"): OpenApiResponse(response=ChatCompletionSerializer, description=OK_DESCRIPTION),
        (200, "text/event-stream"): OpenApiResponse(response=ServerSentEventSerializer, description=OK_DESCRIPTION),
        400: _error("Invalid JSON or parameters (`param` names the field); type `invalid_request_error`."),
        **AUTH_ERRORS,
        404: _error("The model is not allowed for this key or does not exist (code `model_not_found`)."),
        409: _error("Passed through from the upstream."),
        413: _error("The body is larger than MAX_REQUEST_BODY_MB (code `request_too_large`)."),
        415: _error("Passed through from the upstream."),
        422: _error("Passed through from the upstream."),
        429: _error(
            "A rate limit (type `requests` or `tokens`, code `rate_limit_exceeded`, with `retry-after`), a spent "
            "budget (type and code `insufficient_quota`, `x-should-retry: false`), or the upstream's own 429."
        ),
        **UPSTREAM_ERRORS,
    },
    examples=[
        OpenApiExample(
            "Hello",
            value={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]},
            request_only=True,
        ),
        OpenApiExample(
            "Streamed, with usage",
            value={
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "Hello"}],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            request_only=True,
        ),
    ],
)

model_list_schema = extend_schema(
    summary="List models",
    description="The models this key may use (its allowlist), or the upstream's list for a key without one.",
    tags=["models"],
    parameters=RESPONSE_HEADERS[:1],
    responses={200: ModelListSerializer, **AUTH_ERRORS, **UPSTREAM_ERRORS},
)


def describe_cross_field_rules(result, generator, request, public):
    """POSTPROCESSING_HOOKS entry: the rules serializers cannot state, one field depending on another.

    Chat and legacy completions: `stream_options` (unless null) needs `stream: true`, as validation enforces.
    Legacy completions: OpenAI takes `best_of` only when it is at least `n` and without `stream`; described here
    (more strictly: with `n` 1 or absent), since the upstream refuses the rest.
    """
    schemas = result.get("components", {}).get("schemas", {})
    stream_options_rule = [
        {"not": {"required": ["stream_options"]}},
        {"properties": {"stream_options": {"nullable": True, "enum": [None]}}},
        {"required": ["stream"], "properties": {"stream": {"enum": [True]}}},
    ]
    if "ChatCompletionCreateRequest" in schemas:
        schemas["ChatCompletionCreateRequest"]["anyOf"] = stream_options_rule
    if "ResponseCreateRequest" in schemas:
        # `previous_response_id` and `conversation` together are refused.
        schemas["ResponseCreateRequest"]["anyOf"] = [
            {"not": {"required": ["previous_response_id"]}},
            {"properties": {"previous_response_id": {"nullable": True, "enum": [None]}}},
            {"not": {"required": ["conversation"]}},
        ]
    if "CompletionCreateRequest" in schemas:
        schemas["CompletionCreateRequest"]["allOf"] = [
            {"anyOf": stream_options_rule},
            {
                "anyOf": [
                    {"not": {"required": ["best_of"]}},
                    {"properties": {"best_of": {"nullable": True, "enum": [None]}}},
                    {
                        "properties": {
                            "best_of": {"minimum": 1},
                            "n": {"nullable": True, "enum": [None, 1]},
                            "stream": {"nullable": True, "enum": [None, False]},
                        }
                    },
                ]
            },
        ]
    return result


# The other relayed endpoints. Their answers are relayed unchanged, so the response schemas stay open objects.


TOKEN_ARRAY = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}, "minItems": 1}
CONTENT_PARTS = {
    "type": "array",
    "minItems": 1,
    "items": {
        "oneOf": [
            {
                "type": "object",
                "properties": {"type": {"enum": ["text"]}, "text": {"type": "string"}},
                "required": ["type", "text"],
            },
            {
                "type": "object",
                "properties": {
                    "type": {"enum": ["image_url"]},
                    "image_url": {
                        "type": "object",
                        "properties": {"url": {"type": "string"}},
                        "required": ["url"],
                    },
                },
                "required": ["type", "image_url"],
            },
        ]
    },
}


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1},
            TOKEN_ARRAY,
            {"type": "array", "items": TOKEN_ARRAY, "minItems": 1},
        ],
    }
)
class PromptField(serializers.JSONField):
    """A legacy `prompt`: a string, strings, a token array or token arrays."""


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 2048},
            TOKEN_ARRAY,
            {"type": "array", "items": TOKEN_ARRAY, "minItems": 1, "maxItems": 2048},
        ]
    }
)
class EmbeddingInputField(serializers.JSONField):
    """An embeddings `input`: a non-empty string, up to 2,048 non-empty strings, a token array or token arrays."""


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1},
            CONTENT_PARTS,
        ]
    }
)
class ModerationInputField(serializers.JSONField):
    """A moderations `input`: a string, strings, or content parts (`text`, `image_url`)."""


class CompletionCreateSerializer(serializers.Serializer):
    """The main fields of OpenAI's CreateCompletionRequest (legacy completions), with the ranges Tollgate checks."""

    model = serializers.CharField(validators=[NOT_BLANK], help_text="Model id, e.g. `gpt-3.5-turbo-instruct`.")
    prompt = PromptField(
        help_text="A string, an array of strings, an array of token ids or an array of token-id arrays."
    )
    max_tokens = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, max_value=2**31 - 1, help_text="OpenAI's default is 16."
    )
    n = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=128)
    best_of = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=20,
        help_text="OpenAI asks for at least `n` and not with `stream` (the upstream judges that).",
    )
    echo = serializers.BooleanField(required=False, allow_null=True)
    stream = serializers.BooleanField(required=False, allow_null=True)
    stream_options = StreamOptionsSerializer(
        required=False, allow_null=True, help_text="Only allowed with `stream: true`."
    )
    logprobs = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=5)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    presence_penalty = serializers.FloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    frequency_penalty = serializers.FloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    seed = serializers.IntegerField(required=False, allow_null=True, min_value=-(2**63), max_value=2**63 - 1)


class EmbeddingCreateSerializer(serializers.Serializer):
    """The fields of OpenAI's CreateEmbeddingRequest that Tollgate checks."""

    model = serializers.CharField(validators=[NOT_BLANK], help_text="e.g. `text-embedding-3-small`.")
    input = EmbeddingInputField(
        help_text="A non-empty string, up to 2,048 non-empty strings, an array of token ids, or token-id arrays."
    )
    encoding_format = serializers.ChoiceField(choices=["float", "base64"], required=False)
    # Tollgate checks >= 1; the upper bound is the model's own size (1,536 for text-embedding-3-small, 3,072 for
    # -large), which the upstream judges: described here at the smaller one.
    dimensions = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=1536)
    user = serializers.CharField(required=False, help_text="An end-user id, for OpenAI's abuse monitoring.")


class ModerationCreateSerializer(serializers.Serializer):
    """OpenAI's CreateModerationRequest."""

    input = ModerationInputField(help_text="A string, an array of strings, or an array of content parts.")
    model = serializers.CharField(
        required=False,
        validators=[NOT_BLANK],
        help_text="Default `omni-moderation-latest` (also what the allowlist checks when it is absent).",
    )


def relayed_endpoint_schema(*, summary: str, description: str, tag: str, request, streams: bool):
    """The description of a relayed endpoint whose answer is the upstream's, unchanged."""
    ok = {
        (200, "application/json"): OpenApiResponse(
            response=OpenApiTypes.OBJECT, description="The upstream's answer, unchanged."
        )
    }
    if streams:
        ok[(200, "text/event-stream")] = OpenApiResponse(
            response=ServerSentEventSerializer,
            description="With `stream: true`: `data:` events ended by `data: [DONE]`, as for chat.",
        )
    return extend_schema(
        summary=summary,
        description=description,
        tags=[tag],
        request=request,
        parameters=RESPONSE_HEADERS,
        responses={
            **ok,
            400: _error("Invalid JSON or parameters (`param` names the field); type `invalid_request_error`."),
            **AUTH_ERRORS,
            404: _error("The model is not allowed for this key or does not exist (code `model_not_found`)."),
            409: _error("Passed through from the upstream."),
            413: _error("The body is larger than MAX_REQUEST_BODY_MB (code `request_too_large`)."),
            415: _error("Passed through from the upstream."),
            422: _error("Passed through from the upstream."),
            429: _error("A rate limit, a spent budget, or the upstream's own 429."),
            **UPSTREAM_ERRORS,
        },
    )


completion_schema = relayed_endpoint_schema(
    summary="Create a completion (legacy)",
    description="OpenAI's `POST /completions`, relayed like chat: plain or streamed, usage recorded and priced.",
    tag="completions",
    request=CompletionCreateSerializer,
    streams=True,
)
embedding_schema = relayed_endpoint_schema(
    summary="Create embeddings",
    description="OpenAI's `POST /embeddings`. Reserves the input's tokens; priced per million input tokens.",
    tag="embeddings",
    request=EmbeddingCreateSerializer,
    streams=False,
)
moderation_schema = relayed_endpoint_schema(
    summary="Classify input (moderations)",
    description="OpenAI's `POST /moderations`. Free: counts against requests per minute only; recorded.",
    tag="moderations",
    request=ModerationCreateSerializer,
    streams=False,
)


# The Responses API and conversations


OBJECT_ID = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9_-]+$"}


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "role": {"enum": ["user", "assistant", "system", "developer"]},
                        "content": {"type": "string"},
                    },
                    "required": ["role", "content"],
                },
            },
        ]
    }
)
class ResponseInputField(serializers.JSONField):
    """A Responses `input`: a string, or input items (described here as messages; other item types pass too)."""


@extend_schema_field({"oneOf": [OBJECT_ID, {"type": "object", "properties": {"id": OBJECT_ID}, "required": ["id"]}]})
class ConversationRefField(serializers.JSONField):
    """A conversation id, or an object with its `id`."""


@extend_schema_field(
    {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "type": {"enum": ["function"]},
                "name": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_-]+$"},
                "parameters": {"type": "object"},
            },
            "required": ["type", "name"],
        },
    }
)
class ToolsField(serializers.JSONField):
    """`tools`: objects with a `type` (described here as function tools; hosted tools pass too, if allowed)."""


class ResponseCreateSerializer(serializers.Serializer):
    """The main fields of OpenAI's CreateResponse, with the checks Tollgate makes; every other field passes."""

    model = serializers.CharField(validators=[NOT_BLANK], help_text="Model id; must be allowed for the key.")
    input = ResponseInputField(required=False, help_text="A string, or an array of input items.")
    instructions = serializers.CharField(
        required=False, allow_blank=True, help_text="A system (developer) message, a string."
    )
    stream = serializers.BooleanField(required=False, allow_null=True, help_text="`true`: typed SSE events.")
    background = serializers.BooleanField(
        required=False,
        allow_null=True,
        help_text="`true`: answered at once (`queued`); Tollgate holds the key's concurrency slot and reservations "
        "until the response ends, then settles it at its real usage.",
    )
    store = serializers.BooleanField(required=False, allow_null=True)
    previous_response_id = serializers.RegexField(
        r"^[A-Za-z0-9_-]+$",
        max_length=128,
        required=False,
        allow_null=True,
        help_text="Must be a response this key's lineage created (else 404).",
    )
    conversation = ConversationRefField(
        required=False, help_text="A conversation id (or `{id}`) this key's lineage created (else 404)."
    )
    tools = ToolsField(
        required=False,
        help_text="Hosted tool types must be allowed for the key (else 403, `param: tools`); function tools always "
        "are. Hosted tool calls are priced per call.",
    )
    max_output_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=2**31 - 1)
    max_tool_calls = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=2**31 - 1)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    top_logprobs = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=20)
    parallel_tool_calls = serializers.BooleanField(required=False, allow_null=True)


class InputTokensSerializer(serializers.Serializer):
    model = serializers.CharField(validators=[NOT_BLANK], help_text="Optional to Tollgate; described as sent.")
    input = ResponseInputField(required=False)
    previous_response_id = serializers.RegexField(r"^[A-Za-z0-9_-]+$", max_length=128, required=False, allow_null=True)
    conversation = ConversationRefField(required=False)
    tools = ToolsField(required=False)


class ConversationSerializer(serializers.Serializer):
    items = serializers.ListField(child=serializers.DictField(), required=False, max_length=20)
    metadata = serializers.DictField(required=False, allow_null=True)


class ConversationItemsSerializer(serializers.Serializer):
    items = serializers.ListField(child=serializers.DictField(), min_length=1, max_length=20)


def _path_parameter(name: str, what: str) -> OpenApiParameter:
    return OpenApiParameter(name, OpenApiTypes.STR, OpenApiParameter.PATH, description=what)


RESPONSE_ID = _path_parameter("response_id", "A response this key's lineage created (any other id: 404).")
CONVERSATION_ID = _path_parameter("conversation_id", "A conversation this key's lineage created (else 404).")
ITEM_ID = _path_parameter("item_id", "An item of the conversation.")
NOT_OWNED = _error(
    "An id this key's lineage did not create answers exactly like an id that does not exist: OpenAI's 404 "
    "(`param` names the body field for `previous_response_id` and `conversation`)."
)


def state_endpoint_schema(
    *,
    operation_id: str,
    summary: str,
    description: str,
    tag: str,
    request=None,
    streams: bool = False,
    parameters=(),
    forbidden=False,
):
    """An endpoint on server-side state: the upstream's answer unchanged, ownership refusals as 404."""
    ok = {
        (200, "application/json"): OpenApiResponse(response=OpenApiTypes.OBJECT, description="The upstream's answer.")
    }
    if streams:
        ok[(200, "text/event-stream")] = OpenApiResponse(
            response=ServerSentEventSerializer,
            description="Typed events: `event: <type>` then `data: <json>` (with `type` and `sequence_number`), "
            "ended by `response.completed`, `response.incomplete`, `response.failed` or `error`. A failure after "
            "the stream began is a last `event: error` (`{type, code, message, param, sequence_number}`).",
        )
    responses = {
        **ok,
        400: _error("Invalid JSON or parameters (`param` names the field); type `invalid_request_error`."),
        **AUTH_ERRORS,
        404: NOT_OWNED,
        429: _error("A rate limit, a spent budget, or the upstream's own 429."),
        **UPSTREAM_ERRORS,
    }
    if forbidden:
        responses[403] = _error("A hosted tool type the key may not use (code `tool_not_allowed`, `param: tools`).")
    return extend_schema(
        # Explicit: several routes share a view class per path, and the derived ids of two paths collide.
        operation_id=operation_id,
        summary=summary,
        description=description,
        tags=[tag],
        request=request,
        parameters=[*RESPONSE_HEADERS, *parameters],
        responses=responses,
    )


response_create_schema = state_endpoint_schema(
    operation_id="response_create",
    summary="Create a response",
    description="OpenAI's `POST /responses`: plain, `stream: true` (typed events) or `background: true`. The "
    "response belongs to the key's lineage. A follow-up reserves the recorded size of the chain it continues plus "
    "its input; usage (with cached and reasoning tokens) and hosted tool calls are recorded and priced.",
    tag="responses",
    request=ResponseCreateSerializer,
    streams=True,
    forbidden=True,
)
response_retrieve_schema = state_endpoint_schema(
    operation_id="response_retrieve",
    summary="Retrieve a response",
    description="`GET /responses/{id}`; with `?stream=true&starting_after=N`, the response's events from N on.",
    tag="responses",
    streams=True,
    parameters=[
        RESPONSE_ID,
        OpenApiParameter("stream", OpenApiTypes.BOOL, OpenApiParameter.QUERY),
        OpenApiParameter(
            "starting_after",
            {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
            OpenApiParameter.QUERY,
            description="The sequence number after which to resume (0 to 2^31 - 1).",
        ),
    ],
)
response_delete_schema = state_endpoint_schema(
    operation_id="response_delete",
    summary="Delete a response",
    description="`DELETE /responses/{id}`.",
    tag="responses",
    parameters=[RESPONSE_ID],
)
response_cancel_schema = state_endpoint_schema(
    operation_id="response_cancel",
    summary="Cancel a background response",
    description="`POST /responses/{id}/cancel`; the response is settled at its real usage.",
    tag="responses",
    parameters=[RESPONSE_ID],
)
response_input_items_schema = state_endpoint_schema(
    operation_id="response_input_items",
    summary="List a response's input items",
    description="`GET /responses/{id}/input_items` (`after`, `limit`, `order`, `include`).",
    tag="responses",
    parameters=[RESPONSE_ID],
)
response_input_tokens_schema = state_endpoint_schema(
    operation_id="response_input_tokens",
    summary="Count input tokens",
    description="`POST /responses/input_tokens`: free, one request against requests per minute.",
    tag="responses",
    request=InputTokensSerializer,
)
conversation_create_schema = state_endpoint_schema(
    operation_id="conversation_create",
    summary="Create a conversation",
    description="`POST /conversations`; the conversation belongs to the key's lineage. Free.",
    tag="conversations",
    request=ConversationSerializer,
)
conversation_retrieve_schema = state_endpoint_schema(
    operation_id="conversation_retrieve",
    summary="Retrieve a conversation", description="`GET /conversations/{id}`.", tag="conversations",
    parameters=[CONVERSATION_ID],
)  # fmt: skip
conversation_update_schema = state_endpoint_schema(
    operation_id="conversation_update",
    summary="Update a conversation",
    description="`POST /conversations/{id}` (its `metadata`).",
    tag="conversations",
    request=ConversationSerializer,
    parameters=[CONVERSATION_ID],
)
conversation_delete_schema = state_endpoint_schema(
    operation_id="conversation_delete",
    summary="Delete a conversation", description="`DELETE /conversations/{id}`.", tag="conversations",
    parameters=[CONVERSATION_ID],
)  # fmt: skip
conversation_items_create_schema = state_endpoint_schema(
    operation_id="conversation_items_create",
    summary="Add items to a conversation",
    description="`POST /conversations/{id}/items` (up to 20 items).",
    tag="conversations",
    request=ConversationItemsSerializer,
    parameters=[CONVERSATION_ID],
)
conversation_items_list_schema = state_endpoint_schema(
    operation_id="conversation_items_list",
    summary="List a conversation's items", description="`GET /conversations/{id}/items`.", tag="conversations",
    parameters=[CONVERSATION_ID],
)  # fmt: skip
conversation_item_retrieve_schema = state_endpoint_schema(
    operation_id="conversation_item_retrieve",
    summary="Retrieve a conversation item", description="`GET /conversations/{id}/items/{item_id}`.",
    tag="conversations", parameters=[CONVERSATION_ID, ITEM_ID],
)  # fmt: skip
conversation_item_delete_schema = state_endpoint_schema(
    operation_id="conversation_item_delete",
    summary="Delete a conversation item", description="`DELETE /conversations/{id}/items/{item_id}`.",
    tag="conversations", parameters=[CONVERSATION_ID, ITEM_ID],
)  # fmt: skip
