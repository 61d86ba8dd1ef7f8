"""Framework code we copied and adapted fails this test when the pinned framework's original changes.

`config/asgi.py` (`APIHandler`) adapts Django's `ASGIHandler.handle`, `BaseHandler.load_middleware` and
`HttpResponseBase.close`; `core/asyncview.py` (`AsyncAPIView`) adapts DRF's `APIView.dispatch`, `APIView.initial`
and `Request._authenticate`. Each original's source is pinned here by its SHA-256: after an upgrade changes one,
read the new original, carry what matters into our copy (a fix, a new step, a changed contract), then record the
new digest the failure prints.
"""

import hashlib
import importlib
import inspect

import django
import pytest
import rest_framework

VERSIONS = {"django": django.__version__, "rest_framework": rest_framework.VERSION}

# (the original, where our copy lives, SHA-256 of the original's source at the pinned version)
COPIES = [
    (
        "django.core.handlers.asgi.ASGIHandler.handle",
        "config/asgi.py APIHandler.handle",
        "98faeb5bef800331e6a8002fbc96b30e4122a23438ae45a047190a531ea11323",
    ),
    (
        "django.core.handlers.base.BaseHandler.load_middleware",
        "config/asgi.py APIHandler.load_middleware",
        "a1fb7ee5f8586195da2174d1bbc2bbfc7ca19b9d26ea66412cb434f45bf6d467",
    ),
    (
        "django.http.response.HttpResponseBase.close",
        "config/asgi.py APIHandler.handle (closing the response)",
        "84589f5b23acbb23aa9010f3506ef411b72b1053f2fc2764590e2b3bf3470438",
    ),
    (
        "rest_framework.views.APIView.dispatch",
        "core/asyncview.py AsyncAPIView.dispatch",
        "3472ce14592137053f20708c7c57616e49d71bd87fcbb1d730b579ae944f6bd1",
    ),
    (
        "rest_framework.views.APIView.initial",
        "core/asyncview.py AsyncAPIView.ainitial",
        "49a4a966fb04ec8a617151a306a0e96f05c13991745058126fe78b13385a4df5",
    ),
    (
        "rest_framework.request.Request._authenticate",
        "core/asyncview.py AsyncAPIView.aperform_authentication",
        "b3df4cb506df3cf159666d7433d79def6f59bed35d4e70ffe175319f8dca9b64",
    ),
]


def resolve(dotted: str):
    module_name, class_name, attribute = dotted.rsplit(".", 2)
    return getattr(getattr(importlib.import_module(module_name), class_name), attribute)


def source_digest(function) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


@pytest.mark.parametrize(("original", "copy", "digest"), COPIES, ids=[original for original, _, _ in COPIES])
def test_the_original_of_our_copy_is_unchanged(original, copy, digest):
    actual = source_digest(resolve(original))
    framework = original.split(".", 1)[0]
    assert actual == digest, (
        f"{original} changed in the installed {framework} {VERSIONS[framework]}: re-check our copy in {copy} "
        f"against it, then record its new digest here: {actual}"
    )


def test_the_digest_notices_a_one_character_change():
    """The check would fail on any edit of the original, however small."""
    function = resolve(COPIES[0][0])
    source = inspect.getsource(function)
    assert hashlib.sha256(source.replace("body_file", "body_fil3", 1).encode()).hexdigest() != COPIES[0][2]
    assert source_digest(function) == COPIES[0][2]
