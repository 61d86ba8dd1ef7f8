"""GET /healthz (the process answers) and GET /readyz (and its database answers)."""

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connection
from django.db.utils import DatabaseError
from django.http import HttpResponse

from .errors import error_response


async def healthz(request):
    return HttpResponse(b'{"status":"ok"}', content_type="application/json")


def _database_ready() -> bool:
    close_old_connections()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except DatabaseError:
        connection.close()
        return False


async def readyz(request):
    if request.method not in ("GET", "HEAD"):
        return error_response(405, f"Method {request.method} not allowed.", "invalid_request_error")
    if await sync_to_async(_database_ready, thread_sensitive=False)():
        return HttpResponse(b'{"status":"ready"}', content_type="application/json")
    return error_response(503, "The database is unreachable.", "server_error", code="database_unavailable")
