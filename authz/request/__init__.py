"""One reading of each request: ``Request`` (what Envoy described), read once by ``Reader``
into a ``RequestView`` (protocol, ``Action``, ``Body``) that every stage, Check and Process,
works on. ``Outgoing`` is the body as it will be forwarded; ``BodyStash`` carries it from
Check to Process."""

from authz.request.action import Action
from authz.request.body import Body
from authz.request.http import Request
from authz.request.rewrite import Outgoing
from authz.request.stash import BodyStash
from authz.request.view import Reader, RequestView

__all__ = ["Action", "Body", "BodyStash", "Outgoing", "Reader", "Request", "RequestView"]
