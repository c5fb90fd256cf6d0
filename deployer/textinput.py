"""Text input Slipway refuses wherever it comes from, with a 400 that names the field.

Bytes that are not UTF-8, NUL (PostgreSQL refuses it in text and in JSON: the source of
500s), lone surrogates (no database or renderer can encode them) and strings longer than
MAX_TEXT_LENGTH are refused before any form, serializer or query sees them:

- in JSON bodies of the API, by ``TextJSONParser`` (REST_FRAMEWORK's parser);
- in form bodies (the dashboard's forms and the API's form-encoded requests) and in query
  strings, by ``OddTextMiddleware``.

Each check answers the first offending field; nested values are named by their top-level
field, which is how every error of the API and the forms is keyed.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from rest_framework import exceptions
from rest_framework.parsers import JSONParser
from rest_framework.utils import json

# The longest string any field takes: config files up to 512 KiB are the largest real ones.
MAX_TEXT_LENGTH = 512 * 1024
# Paths whose bodies are checked elsewhere: webhooks verify the raw body's signature first.
UNCHECKED_PREFIXES = ("/hooks/",)
_FORM = "application/x-www-form-urlencoded"


def text_problem(text: str, *, max_length: int | None = MAX_TEXT_LENGTH) -> str | None:
    """Why ``text`` is refused (a message that reads after the field's name), or None.

    ``max_length`` None checks only what can never be stored (NUL, lone surrogates)."""
    if "\x00" in text:
        return "contains a NUL character (\\u0000); remove it."
    if max_length is not None and len(text) > max_length:
        return f"is longer than {MAX_TEXT_LENGTH} characters."
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (half of a UTF-16 pair); send valid Unicode text."
    return None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def data_problem(data: Any, *, max_length: int | None = MAX_TEXT_LENGTH) -> tuple[str, str] | None:
    """(field, why) for the first refused string in parsed JSON ``data``, or None.

    A top-level key that is itself refused is named as ``non_field_errors``. Raises
    RecursionError for data nested deeper than Python's recursion limit.
    """
    items = data.items() if isinstance(data, dict) else [("non_field_errors", data)]
    for key, value in items:
        field = str(key)
        if text_problem(field, max_length=max_length):
            return "non_field_errors", "a field name " + str(text_problem(field))
        for text in _strings(value):
            problem = text_problem(text, max_length=max_length)
            if problem:
                return field, problem
    return None


_NOT_UTF8 = "is not UTF-8 text; send the body encoded as UTF-8."
_TOO_DEEP = "JSON parse error - the body nests arrays or objects too deeply."


class TextJSONParser(JSONParser):
    """DRF's JSON parser, refusing odd text with ``{field: [message]}`` (400)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        raw = stream.read() if stream is not None else b""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            # Parsed again keeping the bad bytes as surrogates, to say which field holds them.
            try:
                data = json.loads(raw.decode("utf-8", "surrogateescape"))
                found = data_problem(data)
            except (ValueError, RecursionError):
                raise exceptions.ParseError(f"The body {_NOT_UTF8}") from None
            field = found[0] if found else "non_field_errors"
            raise exceptions.ValidationError({field: [_NOT_UTF8]}) from None
        try:
            # NaN and Infinity are refused, as by DRF's own parser (STRICT_JSON).
            parse_constant = json.strict_constant if self.strict else None
            data = json.loads(text, parse_constant=parse_constant)
            found = data_problem(data)
        except ValueError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
        except RecursionError:
            raise exceptions.ParseError(_TOO_DEEP) from None
        if found:
            raise exceptions.ValidationError({found[0]: [found[1]]})
        return data


def _pairs(encoded: bytes) -> Iterator[tuple[bytes, bytes]]:
    for part in encoded.split(b"&"):
        if part:
            key, _, value = part.partition(b"=")
            yield (
                unquote_to_bytes(key.replace(b"+", b" ")),
                unquote_to_bytes(value.replace(b"+", b" ")),
            )


def form_problem(encoded: bytes) -> tuple[str, str] | None:
    """(field, why) for the first refused field of a urlencoded form or query, or None."""
    decode = codecs.getincrementaldecoder("utf-8")
    for raw_key, raw_value in _pairs(encoded):
        key = raw_key.decode("utf-8", "replace")
        for raw in (raw_key, raw_value):
            try:
                text = decode().decode(raw, final=True)
            except UnicodeDecodeError:
                return key, _NOT_UTF8.replace("the body", "the form")
            problem = text_problem(text)
            if problem:
                return key, problem
    return None


def _query_bytes(query: str) -> bytes:
    # WSGI hands the query string over as latin-1 (PEP 3333), ASGI as UTF-8.
    try:
        return query.encode("latin-1")
    except UnicodeEncodeError:
        return query.encode("utf-8", "surrogateescape")


class OddTextMiddleware:
    """Answer 400 naming the field for odd text in a query string or a form body.

    JSON for the API (``{field: [message]}``, like every API error), a page for the
    dashboard. Bodies over DATA_UPLOAD_MAX_MEMORY_SIZE are left to Django's own refusal.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(UNCHECKED_PREFIXES):
            found = form_problem(_query_bytes(request.META.get("QUERY_STRING", "")))
            if found is None and self._form_body(request):
                found = form_problem(request.body)
            if found is not None:
                return self._refuse(request, *found)
        return self.get_response(request)

    @staticmethod
    def _form_body(request: HttpRequest) -> bool:
        if request.content_type != _FORM:
            return False
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return False
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return length > 0 and (limit is None or length <= limit)

    @staticmethod
    def _refuse(request: HttpRequest, field: str, problem: str) -> HttpResponse:
        if request.path.startswith("/api/"):
            return JsonResponse({field: [problem]}, status=400)
        page = render_to_string("400.html", {"field": field, "problem": problem}, request=request)
        return HttpResponse(page, status=400)
