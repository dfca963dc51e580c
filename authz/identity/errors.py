"""Why a credential was refused: one class per reason, all 401 ``Unauthenticated``.

Exception tree (``reason`` in brackets; ``error`` is the RFC 6750 code in the challenge)::

    Unauthenticated
    └── IdentityError
        ├── CredentialsMissing       [token.missing]            no error code (RFC 6750 §3.1)
        ├── CredentialsBadScheme     [credentials.bad_scheme]   no error code (unsupported scheme)
        ├── CredentialsMultiple      [credentials.multiple]     invalid_request
        ├── CredentialsMalformed     [credentials.malformed]    invalid_request
        ├── ApiKeyInvalid            [api_key.invalid]          invalid_token
        └── TokenInvalid             [token.invalid]            invalid_token
            ├── TokenTooLarge        [token.too_large]
            ├── TokenMalformed       [token.malformed]
            ├── TokenDuplicateKey    [token.duplicate_key]
            ├── TokenTooDeep         [token.too_deep]
            ├── TokenAlgNotAllowed   [token.alg_not_allowed]
            ├── TokenCritUnsupported [token.crit_unsupported]
            ├── TokenBadType         [token.bad_type]
            ├── TokenUnknownIssuer   [token.unknown_issuer]
            ├── TokenUnknownKid      [token.unknown_kid]
            ├── TokenKeyMismatch     [token.key_mismatch]
            ├── TokenBadSignature    [token.bad_signature]
            ├── TokenExpired         [token.expired]
            ├── TokenNotYetValid     [token.not_yet_valid]
            ├── TokenIssuedInFuture  [token.issued_in_future]
            ├── TokenLifetimeTooLong [token.lifetime_too_long]  exp beyond the issuer's bound
            ├── TokenBadAudience     [token.bad_audience]
            ├── TokenMissingClaim    [token.missing_claim]
            └── TokenInvalidClaim    [token.invalid_claim]

    Unavailable
    └── KeysUnavailable              [identity.keys_unavailable] 503: an issuer's keys were never
                                     obtained (the IdP is down and nothing is cached)

Messages and ``error_description`` texts are fixed per class: nothing from the request is ever
echoed back. The stage adds the ``WWW-Authenticate`` header, because only it knows the
resource-metadata URL.
"""

from __future__ import annotations

from authz.errors import Unauthenticated, Unavailable


class IdentityError(Unauthenticated):
    reason = "credentials.invalid"
    default_message = "the credentials are invalid"
    error_code: str | None = "invalid_token"  # RFC 6750 error attribute; None for "no attempt"


class CredentialsMissing(IdentityError):
    reason = "token.missing"
    default_message = "a bearer token is required"
    error_code = None


class CredentialsBadScheme(IdentityError):
    reason = "credentials.bad_scheme"
    default_message = "the Authorization scheme is not supported; use Bearer"
    error_code = None


class CredentialsMultiple(IdentityError):
    reason = "credentials.multiple"
    default_message = "more than one credential was sent"
    error_code = "invalid_request"


class CredentialsMalformed(IdentityError):
    reason = "credentials.malformed"
    default_message = "the Authorization header is malformed"
    error_code = "invalid_request"


class ApiKeyInvalid(IdentityError):
    reason = "api_key.invalid"
    default_message = "the API key is not valid"


class TokenInvalid(IdentityError):
    reason = "token.invalid"
    default_message = "the access token is invalid"


class TokenTooLarge(TokenInvalid):
    reason = "token.too_large"
    default_message = "the access token is too large"


class TokenMalformed(TokenInvalid):
    reason = "token.malformed"
    default_message = "the access token is not a well-formed signed JWT"


class TokenDuplicateKey(TokenInvalid):
    reason = "token.duplicate_key"
    default_message = "the access token repeats a JSON member"


class TokenTooDeep(TokenInvalid):
    reason = "token.too_deep"
    default_message = "the access token is nested too deeply"


class TokenAlgNotAllowed(TokenInvalid):
    reason = "token.alg_not_allowed"
    default_message = "the access token's signing algorithm is not allowed"


class TokenCritUnsupported(TokenInvalid):
    reason = "token.crit_unsupported"
    default_message = "the access token requires an unsupported extension"


class TokenBadType(TokenInvalid):
    reason = "token.bad_type"
    default_message = "the access token has the wrong type"


class TokenUnknownIssuer(TokenInvalid):
    reason = "token.unknown_issuer"
    default_message = "the access token's issuer is not trusted"


class TokenUnknownKid(TokenInvalid):
    reason = "token.unknown_kid"
    default_message = "the access token's signing key is not known"


class TokenKeyMismatch(TokenInvalid):
    reason = "token.key_mismatch"
    default_message = "the signing key cannot be used with the token's algorithm"


class TokenBadSignature(TokenInvalid):
    reason = "token.bad_signature"
    default_message = "the access token's signature is invalid"


class TokenExpired(TokenInvalid):
    reason = "token.expired"
    default_message = "the access token has expired"


class TokenNotYetValid(TokenInvalid):
    reason = "token.not_yet_valid"
    default_message = "the access token is not valid yet"


class TokenIssuedInFuture(TokenInvalid):
    reason = "token.issued_in_future"
    default_message = "the access token was issued in the future"


class TokenLifetimeTooLong(TokenInvalid):
    reason = "token.lifetime_too_long"
    default_message = "the access token lives longer than this issuer's tokens may"


class TokenBadAudience(TokenInvalid):
    reason = "token.bad_audience"
    default_message = "the access token was not issued for this resource"


class TokenMissingClaim(TokenInvalid):
    reason = "token.missing_claim"
    default_message = "the access token lacks a required claim"


class TokenInvalidClaim(TokenInvalid):
    reason = "token.invalid_claim"
    default_message = "the access token has a claim of the wrong type"


class KeysUnavailable(Unavailable):
    """We cannot verify because the issuer's keys were never obtained: an outage, not a bad
    token, so the client is told to retry rather than to throw its token away."""

    reason = "identity.keys_unavailable"
    default_message = "the token issuer's keys are unavailable; try again later"


# Map of jose error codes to the rejection they mean for an access token.
JOSE_CODES: dict[str, type[TokenInvalid]] = {
    "too_large": TokenTooLarge,
    "malformed": TokenMalformed,
    "duplicate_key": TokenDuplicateKey,
    "too_deep": TokenTooDeep,
    "bad_signature": TokenBadSignature,
    "key_mismatch": TokenKeyMismatch,
}
