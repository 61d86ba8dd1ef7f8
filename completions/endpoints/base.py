"""What an endpoint declares: everything particular to it, and nothing of the pipeline (`completions.relay`).

An `Endpoint` names its paths and its upstream path, how its body is validated (`parse`), how many input tokens
it will cost before the upstream says (`estimate_input`), where its usage sits in a JSON answer and in its
stream (`read_usage`, `stream`), whether it generates output tokens and whether it costs money. The pipeline
derives the request's `metering.Demand` from these, so limits and budgets need no knowledge of any endpoint.

Endpoints on server-side state (the Responses API, conversations) declare more, and the pipeline does the rest:
their HTTP `method`, the owned object their path names (`owned`, checked before any upstream call), the owned
objects their body names (`references`), the kind of object their answer creates (`creates`, whose ownership is
recorded), whether that object outlives the request (`outlives`: a background response, settled by the follower),
which query parameters go upstream (`read_query`), and which hosted tools the body asks for (`hosted_tools`).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from metering.throttling import Demand

from ..usage import NO_USAGE, Usage
from ..validation import ParsedRequest


def body_usage_field(read: Callable[[Any], Usage]) -> Callable[[dict], Usage | None]:
    """A reader of the top-level `usage` object of an answer (None when the answer has none)."""

    def read_body(body: dict) -> Usage | None:
        usage = body.get("usage")
        return None if usage is None else read(usage)

    return read_body


@dataclass(frozen=True, slots=True)
class Owned:
    """An object the request names that the key's lineage must own: its kind (`response`, `conversation`), its
    id, and the body field that named it (None: the path)."""

    kind: str
    object_id: str
    param: str | None = None


@dataclass(frozen=True, slots=True)
class OwnedPath:
    """The path parameter (`response_id`) naming an owned object of `kind`."""

    kind: str
    parameter: str


def no_references(parsed: ParsedRequest) -> tuple[Owned, ...]:
    return ()


def never(parsed: ParsedRequest) -> bool:
    return False


def no_usage(body: dict) -> Usage:
    """For endpoints the upstream reports no tokens for (moderations): zero, and not an estimate."""
    return NO_USAGE


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One relayed endpoint, declared.

    * `name`: its name in usage records, logs, metrics and `usage_report --endpoint` (`chat.completions`, ...).
    * `paths`: the paths Tollgate serves it on; `upstream_path`: where it is sent, under the upstream's base URL.
    * `parse(raw) -> ParsedRequest`: validation (raises `InvalidRequest`).
    * `estimate_input(parsed) -> int`: input tokens to reserve before the upstream reports usage.
    * `read_usage(answer: dict) -> Usage | None`: the usage of a plain answer (raises `completions.usage.BadUsage`).
    * `stream`: the stream dialect (`completions.sse`), or None for an endpoint that never streams.
    * `output`: whether it generates output tokens (reserved against tokens/min and budgets).
    * `priced`: whether it costs money (moderations do not).
    * `log_field`: the body field logged with LOG_PROMPTS=true.
    * `schema`: the drf-spectacular decorator describing it in `/api/schema/`.
    * `method`: the HTTP method it answers (`POST`, `GET`, `DELETE`); `upstream_path` may name path parameters
      (`/responses/{response_id}`), filled from the route's.
    * `owned`: the path parameter naming an object the key's lineage must own (404 otherwise, before any upstream
      call); `references(parsed) -> (Owned, ...)`: the owned objects the body names (`previous_response_id`).
    * `creates`: the kind of object whose id the answer carries (`id`; a stream's `response.created`): it is
      recorded as the key lineage's. `outlives(parsed)`: that object goes on after the answer (background): the
      admission is handed to `completions.background`, which settles it when the object ends.
    * `read_query(parsed, query) -> str`: validates the query string and returns what to forward ("" = none).
    * `hosted_tools(parsed) -> frozenset`: the hosted tool types the body names (checked against the key).
    * `metered`: whether the answer's usage is this request's (False: retrieve, delete, lists).
    """

    name: str
    paths: tuple[str, ...]
    upstream_path: str
    parse: Callable[[bytes], ParsedRequest]
    estimate_input: Callable[[ParsedRequest], int]
    read_usage: Callable[[dict], Usage | None]
    stream: Any = None
    output: bool = True
    priced: bool = True
    log_field: str = "input"
    schema: Callable | None = None
    method: str = "POST"
    owned: OwnedPath | None = None
    references: Callable[[ParsedRequest], tuple[Owned, ...]] = no_references
    creates: str | None = None
    outlives: Callable[[ParsedRequest], bool] = never
    read_query: Callable[[ParsedRequest, Mapping], str] | None = None
    # False for routes that read or change an object without generating (retrieve, delete, lists): the answer's
    # usage, if any, was accounted when the object was created, so none is taken (and none estimated) here.
    metered: bool = True
    hosted_tools: Callable[[ParsedRequest], frozenset] | None = None

    def demand(self, parsed: ParsedRequest, input_tokens: int) -> Demand:
        """What `parsed` asks of its key's limits and budget."""
        return Demand(
            model=parsed.model,
            input_tokens=input_tokens,
            max_output_tokens=parsed.max_output_tokens,
            choices=parsed.choices,
            output=self.output,
            priced=self.priced,
            hosted_tools=tuple(sorted(self.hosted_tools(parsed))) if self.hosted_tools is not None else (),
            max_tool_calls=parsed.max_tool_calls,
        )
