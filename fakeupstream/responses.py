"""The fake upstream's Responses API and conversations: stored responses, typed event streams, background mode,
conversations, function calls and hosted-tool output items -- enough for the official SDK and the Agents SDK.

Replies are deterministic: the output text is ``"echo: " + <the last user text>``; a request with function tools
whose input does not end with a ``function_call_output`` gets a ``function_call`` of the first function tool
(arguments made from its JSON schema: ``"tollgate"`` for strings, ``1`` for numbers, ``true`` for booleans), and
one answering a call gets ``"tool said: <output>"``. Each hosted tool in ``tools`` (``web_search``,
``file_search``, ``code_interpreter``, ``image_generation``, ``mcp``) adds one completed ``<type>_call`` item.
Tokens are one per word; a follow-up (``previous_response_id`` or ``conversation``) adds what it continues to its
input tokens, as OpenAI does.

The body's ``"fake"`` object steers it: ``chunk_delay_ms`` (between stream events), ``cut_after_chunks`` (close
the connection after that many text deltas), ``error_after_chunks`` (send an ``error`` event instead of the rest),
``status`` (+ ``error_body``: answer that error), ``usage`` (reported verbatim), ``reasoning_tokens``,
``cached_tokens``, ``hosted_calls`` (``{"web_search_call": 2}``: output items to add) and ``background_ms``
(how long a background response runs; default 300).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

HOSTED_CALL_ITEMS = {
    "web_search": "web_search_call",
    "web_search_preview": "web_search_call",
    "file_search": "file_search_call",
    "code_interpreter": "code_interpreter_call",
    "image_generation": "image_generation_call",
    "mcp": "mcp_call",
}
TERMINAL = ("completed", "incomplete", "failed", "cancelled")
_JSON = "application/json"
_SSE = "text/event-stream; charset=utf-8"


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type=_JSON)


def _words(text: str) -> int:
    return len(text.split())


def _text_of(item: Any) -> str:
    if not isinstance(item, dict):
        return ""
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    if isinstance(item.get("output"), str):
        return item["output"]
    return ""


def _sample(schema: Any) -> Any:
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: _sample(sub) for name, sub in properties.items()}
    return "tollgate"


@dataclass
class Stored:
    """One response: its object as the API shows it, its input items, and when a background one is done."""

    obj: dict[str, Any]
    final: dict[str, Any]
    input_items: list[dict[str, Any]]
    ready_at: float = 0.0
    fake: dict[str, Any] = field(default_factory=dict)


class ResponsesFake:
    """State and handlers of ``/v1/responses*`` and ``/v1/conversations*``."""

    def __init__(self) -> None:
        self.responses: dict[str, Stored] = {}
        self.conversations: dict[str, dict[str, Any]] = {}
        self.items: dict[str, list[dict[str, Any]]] = {}
        self._ids = itertools.count(1)

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}{int(time.time() * 1000) % 10**9:09d}"

    # ------------------------------------------------------------------ dispatch

    async def handle(self, request: web.BaseRequest, path: str, body: bytes) -> web.StreamResponse:
        method = request.method
        parts = path.strip("/").split("/")[1:]  # after "v1"
        try:
            data = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(data, dict):
            return _error(400, "The body must be a JSON object.")
        if parts[0] == "responses":
            return await self._responses(request, method, parts[1:], data)
        return self._conversations(request, method, parts[1:], data)

    async def _responses(self, request, method: str, rest: list[str], data: dict) -> web.StreamResponse:
        if not rest:
            if method == "POST":
                return await self.create(request, data)
        elif rest == ["input_tokens"] and method == "POST":
            return _json({"object": "response.input_tokens", "input_tokens": self._input_tokens(data)})
        else:
            stored = self.responses.get(rest[0])
            if stored is None:
                return _error(404, f"Response with id '{rest[0]}' not found.")
            if len(rest) == 1 and method == "GET":
                self._advance(stored)
                if request.query.get("stream") == "true":
                    after = int(request.query.get("starting_after", "-1"))
                    return await self._replay(request, stored, after)
                return _json(stored.obj)
            if len(rest) == 1 and method == "DELETE":
                del self.responses[rest[0]]
                return _json({"id": rest[0], "object": "response.deleted", "deleted": True})
            if rest[1:] == ["cancel"] and method == "POST":
                return self._cancel(stored)
            if rest[1:] == ["input_items"] and method == "GET":
                return _json(self._list(stored.input_items, request.query))
        return _error(404, f"Invalid URL ({method} {request.path})")

    # ------------------------------------------------------------------ responses

    def _input_items(self, data: dict) -> list[dict[str, Any]]:
        value = data.get("input")
        if isinstance(value, str):
            value = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
        items = []
        for item in value if isinstance(value, list) else ():
            if isinstance(item, dict):
                item = dict(item)
                item.setdefault("type", "message")
                item.setdefault("id", self._id("msg" if item["type"] == "message" else "item"))
                if isinstance(item.get("content"), str):
                    item["content"] = [{"type": "input_text", "text": item["content"]}]
                items.append(item)
        return items

    def _context_tokens(self, data: dict) -> int:
        previous = data.get("previous_response_id")
        if isinstance(previous, str) and previous in self.responses:
            usage = self.responses[previous].final.get("usage") or {}
            return int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
        conversation = data.get("conversation")
        conversation = conversation.get("id") if isinstance(conversation, dict) else conversation
        if isinstance(conversation, str) and conversation in self.items:
            return sum(_words(_text_of(item)) for item in self.items[conversation])
        return 0

    def _input_tokens(self, data: dict) -> int:
        text = " ".join(_text_of(item) for item in self._input_items(data))
        instructions = data.get("instructions") if isinstance(data.get("instructions"), str) else ""
        return _words(text) + _words(instructions) + self._context_tokens(data)

    async def create(self, request: web.BaseRequest, data: dict) -> web.StreamResponse:
        fake = data.get("fake") if isinstance(data.get("fake"), dict) else {}
        if isinstance(fake.get("status"), int):
            body = fake.get("error_body") or {
                "error": {"message": "fake error", "type": "server_error", "param": None, "code": None}
            }
            return web.Response(status=fake["status"], body=orjson.dumps(body), content_type=_JSON)
        if not isinstance(data.get("model"), str):
            return _error(400, "Missing required parameter: 'model'.", "model")
        previous = data.get("previous_response_id")
        if isinstance(previous, str) and previous not in self.responses:
            return _error(404, f"Previous response with id '{previous}' not found.", "previous_response_id")
        conversation = data.get("conversation")
        conversation = conversation.get("id") if isinstance(conversation, dict) else conversation
        if isinstance(conversation, str) and conversation not in self.conversations:
            return _error(404, f"Conversation with id '{conversation}' not found.", "conversation")
        response_id = self._id("resp")
        input_items = self._input_items(data)
        final = self._final(response_id, data, input_items, fake)
        background = data.get("background") is True
        store = data.get("store") is not False
        stored = Stored(obj=final, final=final, input_items=input_items, fake=fake)
        if background:
            stored.obj = {**final, "status": "queued", "output": [], "usage": None}
            stored.ready_at = time.monotonic() + float(fake.get("background_ms", 300)) / 1000
        if store or background:
            self.responses[response_id] = stored
        if isinstance(conversation, str):
            self.items[conversation].extend(input_items)
            self.items[conversation].extend(final["output"])
        if data.get("stream") is True:
            return await self._stream(request, stored, -1, live=not background)
        return _json(stored.obj)

    def _final(self, response_id: str, data: dict, input_items: list, fake: dict) -> dict[str, Any]:
        tools = [tool for tool in data.get("tools") or () if isinstance(tool, dict)]
        output: list[dict[str, Any]] = []
        for tool in tools:
            call = HOSTED_CALL_ITEMS.get(tool.get("type", ""))
            if call is not None:
                output.append({"type": call, "id": self._id(call.split("_")[0]), "status": "completed"})
        for call, count in (fake.get("hosted_calls") or {}).items():
            output.extend({"type": call, "id": self._id("tc"), "status": "completed"} for _ in range(int(count)))
        functions = [tool for tool in tools if tool.get("type") == "function"]
        last = input_items[-1] if input_items else {}
        text = _text_of(last)
        if functions and last.get("type") != "function_call_output":
            function = functions[0]
            arguments = orjson.dumps(_sample(function.get("parameters") or {})).decode()
            output.append(
                {
                    "type": "function_call",
                    "id": self._id("fc"),
                    "call_id": self._id("call"),
                    "name": function.get("name", "tool"),
                    "arguments": arguments,
                    "status": "completed",
                }
            )
            reply = arguments
        else:
            reply = f"tool said: {text}" if last.get("type") == "function_call_output" else f"echo: {text}"
            output.append(
                {
                    "type": "message",
                    "id": self._id("msg"),
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": reply, "annotations": [], "logprobs": []}],
                }
            )
        output_tokens = _words(reply) + int(fake.get("reasoning_tokens", 0))
        input_tokens = self._input_tokens(data)
        usage = fake.get("usage") or {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": min(int(fake.get("cached_tokens", 0)), input_tokens)},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": int(fake.get("reasoning_tokens", 0))},
            "total_tokens": input_tokens + output_tokens,
        }
        conversation = data.get("conversation")
        return {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "background": data.get("background") is True,
            "error": None,
            "incomplete_details": None,
            "instructions": data.get("instructions"),
            "max_output_tokens": data.get("max_output_tokens"),
            "model": data["model"],
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": data.get("previous_response_id"),
            "conversation": {"id": conversation.get("id") if isinstance(conversation, dict) else conversation}
            if conversation
            else None,
            "store": data.get("store") is not False,
            "temperature": data.get("temperature", 1.0),
            "text": {"format": {"type": "text"}},
            "tool_choice": data.get("tool_choice", "auto"),
            "tools": tools,
            "top_p": data.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": usage,
            "metadata": data.get("metadata") or {},
        }

    def _advance(self, stored: Stored) -> None:
        if stored.obj["status"] in ("queued", "in_progress") and time.monotonic() >= stored.ready_at:
            stored.obj = stored.final

    def _cancel(self, stored: Stored) -> web.Response:
        self._advance(stored)
        if not stored.obj.get("background"):
            return _error(400, "Only background responses can be cancelled.")
        if stored.obj["status"] in ("queued", "in_progress"):
            usage = stored.final["usage"]
            partial = {
                **usage,
                "output_tokens": 1,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage["input_tokens"] + 1,
            }
            stored.final = stored.obj = {**stored.final, "status": "cancelled", "output": [], "usage": partial}
        return _json(stored.obj)

    # ------------------------------------------------------------------ streams

    def _events(self, final: dict) -> list[tuple[str, dict]]:
        """The typed events of a response, in order, without sequence numbers."""
        start = {**final, "status": "in_progress", "output": [], "usage": None}
        events: list[tuple[str, dict]] = [
            ("response.created", {"response": start}),
            ("response.in_progress", {"response": start}),
        ]
        for index, item in enumerate(final["output"]):
            if item["type"] == "message":
                text = item["content"][0]["text"]
                events.append(("response.output_item.added", {"output_index": index, "item": {**item, "content": []}}))
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                where = {"item_id": item["id"], "output_index": index, "content_index": 0}
                events.append(("response.content_part.added", {**where, "part": part}))
                words = text.split(" ")
                for number, word in enumerate(words):
                    delta = word if number == len(words) - 1 else word + " "
                    events.append(("response.output_text.delta", {**where, "delta": delta, "logprobs": []}))
                events.append(("response.output_text.done", {**where, "text": text, "logprobs": []}))
                events.append(("response.content_part.done", {**where, "part": {**part, "text": text}}))
            elif item["type"] == "function_call":
                events.append(
                    ("response.output_item.added", {"output_index": index, "item": {**item, "arguments": ""}})
                )
                where = {"item_id": item["id"], "output_index": index}
                events.append(("response.function_call_arguments.delta", {**where, "delta": item["arguments"]}))
                events.append(("response.function_call_arguments.done", {**where, "arguments": item["arguments"]}))
            else:
                events.append(("response.output_item.added", {"output_index": index, "item": item}))
            events.append(("response.output_item.done", {"output_index": index, "item": item}))
        terminal = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
            final["status"], "response.failed" if final["status"] == "failed" else "response.completed"
        )
        events.append((terminal, {"response": final}))
        return events

    async def _stream(self, request, stored: Stored, after: int, *, live: bool) -> web.StreamResponse:
        fake = stored.fake
        response = web.StreamResponse(status=200, headers={"Content-Type": _SSE, "Cache-Control": "no-cache"})
        await response.prepare(request)
        delay = float(fake.get("chunk_delay_ms", 0)) / 1000
        cut = fake.get("cut_after_chunks") if live else None
        fail = fake.get("error_after_chunks") if live else None
        deltas = 0
        if not live:
            # A background response streamed from its creation: its events come once it has run.
            await response.write(self._frame("response.created", {"response": stored.obj}, 0))
            after = max(after, 0)
            pause = stored.ready_at - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            self._advance(stored)
        for number, (kind, data) in enumerate(self._events(stored.final)):
            if number <= after:
                continue
            if kind == "response.output_text.delta":
                if cut is not None and deltas >= cut:
                    await asyncio.sleep(0.05)  # let what was written reach the client before the cut
                    if request.transport is not None:
                        request.transport.close()
                    return response
                if fail is not None and deltas >= fail:
                    error = {"code": "server_error", "message": "fake failure", "param": None}
                    await response.write(self._frame("error", error, number))
                    await response.write_eof()
                    return response
                deltas += 1
                if delay:
                    await asyncio.sleep(delay)
            await response.write(self._frame(kind, data, number))
        await response.write_eof()
        return response

    async def _replay(self, request, stored: Stored, after: int) -> web.StreamResponse:
        pause = stored.ready_at - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        self._advance(stored)
        response = web.StreamResponse(status=200, headers={"Content-Type": _SSE, "Cache-Control": "no-cache"})
        await response.prepare(request)
        for number, (kind, data) in enumerate(self._events(stored.final)):
            if number > after:
                await response.write(self._frame(kind, data, number))
        await response.write_eof()
        return response

    @staticmethod
    def _frame(kind: str, data: dict, number: int) -> bytes:
        payload = orjson.dumps({"type": kind, **data, "sequence_number": number})
        return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"

    # ------------------------------------------------------------------ conversations

    def _list(self, items: list, query) -> dict[str, Any]:
        ordered = list(items) if query.get("order") == "asc" else list(reversed(items))
        after = query.get("after")
        if after:
            ids = [item.get("id") for item in ordered]
            ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        limit = int(query.get("limit", "20"))
        page = ordered[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(ordered) > limit,
        }

    def _conversations(self, request, method: str, rest: list[str], data: dict) -> web.Response:
        if not rest:
            if method == "POST":
                conversation_id = self._id("conv")
                conversation = {
                    "id": conversation_id,
                    "object": "conversation",
                    "created_at": int(time.time()),
                    "metadata": data.get("metadata") or {},
                }
                self.conversations[conversation_id] = conversation
                self.items[conversation_id] = self._input_items({"input": data.get("items") or []})
                return _json(conversation)
            return _error(404, f"Invalid URL ({method} {request.path})")
        conversation = self.conversations.get(rest[0])
        if conversation is None:
            return _error(404, f"Conversation with id '{rest[0]}' not found.")
        items = self.items[rest[0]]
        if len(rest) == 1:
            if method == "GET":
                return _json(conversation)
            if method == "POST":
                conversation["metadata"] = data.get("metadata") or {}
                return _json(conversation)
            if method == "DELETE":
                del self.conversations[rest[0]]
                return _json({"id": rest[0], "object": "conversation.deleted", "deleted": True})
        elif rest[1] == "items" and len(rest) == 2:
            if method == "POST":
                added = self._input_items({"input": data.get("items") or []})
                items.extend(added)
                return _json(
                    {
                        "object": "list",
                        "data": added,
                        "first_id": added[0]["id"] if added else None,
                        "last_id": added[-1]["id"] if added else None,
                        "has_more": False,
                    }
                )
            if method == "GET":
                return _json(self._list(items, request.query))
        elif rest[1] == "items" and len(rest) == 3:
            found = next((item for item in items if item.get("id") == rest[2]), None)
            if found is None:
                return _error(404, f"Item with id '{rest[2]}' not found.")
            if method == "GET":
                return _json(found)
            if method == "DELETE":
                items.remove(found)
                return _json(conversation)
        return _error(404, f"Invalid URL ({method} {request.path})")
