"""The request body as it will be forwarded: the view's document, rewritten by the stages that
must (a model rewrite, ``stream_options.include_usage``, redaction), encoded once at the end of
``Check``. Only what a stage changed is written anew; every other byte goes as it came."""

from __future__ import annotations

from typing import Any

from authz.jsontext import dumps_utf8
from authz.request.body import Body, encode_form, encode_multipart


class Outgoing:
    """``document`` by body kind: json: the value; form: a tuple of ``(name, value)``;
    multipart: a tuple of the parts' texts; text: the text."""

    __slots__ = ("body", "changed", "document")

    def __init__(self, body: Body) -> None:
        self.body = body
        self.changed = False
        doc = body.document
        if body.kind == "form":
            doc = tuple((f.name, f.value) for f in doc)
        elif body.kind == "multipart":
            doc = tuple(p.text for p in doc)
        self.document: Any = doc

    def replace(self, document: Any) -> None:
        self.document = document
        self.changed = True

    def encode(self) -> bytes:
        kind, raw = self.body.kind, self.body.raw
        if not self.changed:
            return raw
        if kind == "json":
            return dumps_utf8(self.document)
        if kind == "form":
            return encode_form(raw, self.body.document, self.document)
        if kind == "multipart":
            return encode_multipart(raw, self.body.document, self.document)
        if kind == "text":
            return str(self.document).encode("utf-8", "surrogateescape")
        raise ValueError(f"a {kind} body cannot be rewritten")
