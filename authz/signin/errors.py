"""OAuth errors, each with the code its RFC names; mapped to answers in ``answers.py`` only.

Tree::

    OAuthError                      error, status, description (never built from secrets)
    ├── InvalidRequest              invalid_request (RFC 6749 §4.1.2.1, §5.2)
    ├── InvalidClient               invalid_client, 401 at the token endpoint
    ├── InvalidGrant                invalid_grant: bad/expired/replayed code, wrong verifier, reused refresh token
    ├── UnauthorizedClient          unauthorized_client
    ├── UnsupportedGrantType        unsupported_grant_type
    ├── UnsupportedResponseType     unsupported_response_type
    ├── InvalidScope                invalid_scope
    ├── InvalidTarget               invalid_target (RFC 8707): resource missing or not ours
    ├── AccessDenied                access_denied: the user said no, or the upstream refused
    ├── InvalidClientMetadata       invalid_client_metadata (RFC 7591)
    ├── InvalidRedirectUri          invalid_redirect_uri (RFC 7591)
    ├── TooManyRequests             429 temporarily_unavailable with Retry-After (registration, authorization)
    ├── Unavailable                 503 temporarily_unavailable: the store or the upstream is down
    └── ServerError                 500 server_error: a bug of ours, answered in the protocol anyway

``redirectable`` says whether the error may go back to the client's redirect URI: never before
the client and its redirect URI are known to match (RFC 6749 §4.1.2.1), so an unknown client or
an unregistered redirect URI gets an error page, not a redirect.
"""

from __future__ import annotations


class OAuthError(Exception):
    error = "server_error"
    status = 400

    def __init__(self, description: str, *, headers: dict[str, str] | None = None) -> None:
        self.description = description
        self.headers = dict(headers or {})
        super().__init__(f"{self.error}: {description}")


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidClient(OAuthError):
    error = "invalid_client"
    status = 401


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class UnsupportedResponseType(OAuthError):
    error = "unsupported_response_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class InvalidTarget(OAuthError):
    error = "invalid_target"


class AccessDenied(OAuthError):
    error = "access_denied"
    status = 403


class InvalidClientMetadata(OAuthError):
    error = "invalid_client_metadata"


class InvalidRedirectUri(OAuthError):
    error = "invalid_redirect_uri"


class TooManyRequests(OAuthError):
    error = "temporarily_unavailable"
    status = 429


class Unavailable(OAuthError):
    error = "temporarily_unavailable"
    status = 503


class ServerError(OAuthError):
    error = "server_error"
    status = 500


class NotRedirectable(Exception):
    """An authorization request whose client or redirect URI cannot be trusted: answered with
    an error page, never a redirect. Carries the OAuth error it would have been."""

    def __init__(self, error: OAuthError) -> None:
        self.error = error
        super().__init__(str(error))
