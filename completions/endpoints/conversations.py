"""Conversations: server-side state a response can name with `conversation`. Each conversation created through
Tollgate belongs to its key's lineage; every route naming one is refused (404, as for an unknown id) to any other
key. Conversations generate nothing: each route is one request against requests per minute, cost 0."""

from ..schema import (
    conversation_create_schema,
    conversation_delete_schema,
    conversation_item_delete_schema,
    conversation_item_retrieve_schema,
    conversation_items_create_schema,
    conversation_items_list_schema,
    conversation_retrieve_schema,
    conversation_update_schema,
)
from ..validation import (
    ParsedRequest,
    forward_query,
    parse_conversation_items,
    parse_no_body,
    parse_optional_object,
)
from .base import Endpoint, OwnedPath, no_usage
from .responses import CONVERSATION, list_query

CONVERSATION_ID = "v1/conversations/<oid:conversation_id>"
ITEMS = f"{CONVERSATION_ID}/items"
ITEM = f"{ITEMS}/<oid:item_id>"
OWNED_CONVERSATION = OwnedPath(CONVERSATION, "conversation_id")


def include_query(parsed: ParsedRequest, query) -> str:
    return forward_query(("include",), query)


def conversation_route(**declared) -> Endpoint:
    """A conversation route: free, generating nothing, its usage never taken."""
    return Endpoint(
        estimate_input=lambda parsed: 0,
        read_usage=no_usage,
        output=False,
        priced=False,
        metered=False,
        **declared,
    )


CONVERSATIONS_CREATE = conversation_route(
    name="conversations",
    paths=("v1/conversations",),
    upstream_path="/conversations",
    parse=parse_optional_object,
    creates=CONVERSATION,
    schema=conversation_create_schema,
)
CONVERSATIONS_RETRIEVE = conversation_route(
    name="conversations.retrieve",
    method="GET",
    paths=(CONVERSATION_ID,),
    upstream_path="/conversations/{conversation_id}",
    parse=parse_no_body,
    owned=OWNED_CONVERSATION,
    schema=conversation_retrieve_schema,
)
CONVERSATIONS_UPDATE = conversation_route(
    name="conversations.update",
    paths=(CONVERSATION_ID,),
    upstream_path="/conversations/{conversation_id}",
    parse=parse_optional_object,
    owned=OWNED_CONVERSATION,
    schema=conversation_update_schema,
)
CONVERSATIONS_DELETE = conversation_route(
    name="conversations.delete",
    method="DELETE",
    paths=(CONVERSATION_ID,),
    upstream_path="/conversations/{conversation_id}",
    parse=parse_no_body,
    owned=OWNED_CONVERSATION,
    schema=conversation_delete_schema,
)
CONVERSATION_ITEMS_CREATE = conversation_route(
    name="conversations.items.create",
    paths=(ITEMS,),
    upstream_path="/conversations/{conversation_id}/items",
    parse=parse_conversation_items,
    owned=OWNED_CONVERSATION,
    read_query=include_query,
    schema=conversation_items_create_schema,
)
CONVERSATION_ITEMS_LIST = conversation_route(
    name="conversations.items.list",
    method="GET",
    paths=(ITEMS,),
    upstream_path="/conversations/{conversation_id}/items",
    parse=parse_no_body,
    owned=OWNED_CONVERSATION,
    read_query=list_query,
    schema=conversation_items_list_schema,
)
CONVERSATION_ITEM_RETRIEVE = conversation_route(
    name="conversations.items.retrieve",
    method="GET",
    paths=(ITEM,),
    upstream_path="/conversations/{conversation_id}/items/{item_id}",
    parse=parse_no_body,
    owned=OWNED_CONVERSATION,
    read_query=include_query,
    schema=conversation_item_retrieve_schema,
)
CONVERSATION_ITEM_DELETE = conversation_route(
    name="conversations.items.delete",
    method="DELETE",
    paths=(ITEM,),
    upstream_path="/conversations/{conversation_id}/items/{item_id}",
    parse=parse_no_body,
    owned=OWNED_CONVERSATION,
    schema=conversation_item_delete_schema,
)
