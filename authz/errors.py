"""Typed errors. A denial is data: status, a stable reason code, a message, headers.

Exception tree::

    AuthzError
    ├── Deny                      a request is refused; mapped to an HTTP answer in one place
    │   ├── Unauthenticated       401 (stages subclass it per reason: token.expired, ...)
    │   ├── Forbidden             403
    │   ├── BadRequest            400
    │   ├── PayloadTooLarge       413
    │   ├── UnsupportedMediaType  415 (a body labelled or encoded so that it cannot be read)
    │   ├── TooManyRequests       429
    │   ├── Unavailable           503 (a dependency we fail closed on is down)
    │   ├── InternalError         500 (a stage crashed; we fail closed)
    │   └── Answer                200: the sidecar answers itself (approval grants)
    └── ConfigError               a policy file is invalid; carries every problem with its key path

The ``reason`` string is the same in the response header ``x-authz-reason``, the decision log
and the ``reason`` label of ``authz_decisions_total``, so one string finds all three. Reasons are
a bounded set of dotted codes chosen by us, never built from request input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class AuthzError(Exception):
    """Base of every error authz raises on purpose."""


class Deny(AuthzError):
    """A request is refused. Subclasses fix ``status`` and a default ``reason``."""

    status: int = 403
    reason: str = "denied"
    # JSON-RPC style bodies for MCP routes are chosen by the response mapper from this flag.
    default_message: str = "request denied"
    # A body already in the caller's protocol (an answer refused in the API's own error shape).
    body: bytes | None = None

    def __init__(
        self,
        message: str | None = None,
        *,
        reason: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, object] | None = None,
    ) -> None:
        self.message = message or self.default_message
        if reason is not None:
            self.reason = reason
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})
        # Extra fields for the JSON body and the audit record (never secret values).
        self.details: dict[str, object] = dict(details or {})
        super().__init__(f"{self.status} {self.reason}: {self.message}")


class Unauthenticated(Deny):
    status = 401
    reason = "unauthenticated"
    default_message = "authentication required"


class Forbidden(Deny):
    status = 403
    reason = "forbidden"
    default_message = "access denied"


class BadRequest(Deny):
    status = 400
    reason = "bad_request"
    default_message = "malformed request"


class PayloadTooLarge(Deny):
    status = 413
    reason = "body.too_large"
    default_message = "request body too large"


class UnsupportedMediaType(Deny):
    status = 415
    reason = "body.unsupported_media_type"
    default_message = "the request body's type or encoding is not one the sidecar reads"


class TooManyRequests(Deny):
    status = 429
    reason = "rate_limited"
    default_message = "rate limit exceeded"


class Unavailable(Deny):
    status = 503
    reason = "unavailable"
    default_message = "a dependency is unavailable; try again later"


class InternalError(Deny):
    status = 500
    reason = "internal_error"
    default_message = "internal error in the authorization sidecar"


class Answer(Deny):
    """Not a refusal: the sidecar answers the request itself (an approval being granted), with
    ``details`` as the JSON body. It travels the denial path because that is how ext_authz
    answers without forwarding."""

    status = 200
    reason = "answered"
    default_message = "answered by the authorization sidecar"


class ConfigError(AuthzError):
    """A config file is invalid. ``problems`` lists ``(key path, message)`` pairs."""

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = [f"{source}: {len(self.problems)} problem(s)"]
        lines += [f"  {path or '<root>'}: {message}" for path, message in self.problems]
        super().__init__("\n".join(lines))
