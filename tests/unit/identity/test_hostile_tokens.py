"""The hostile-input suite of issue 3: every case is a 401 with its own reason and an RFC 6750 /
MCP ``WWW-Authenticate`` challenge, never a 500, never a hang, never an echo of the input."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from cryptography.hazmat.primitives import serialization
from identity_helpers import API_KEY, bearer, identity_config, make_request

from authz.errors import Deny
from authz.identity.jose import ALGORITHMS, encode_compact, public_jwk
from authz.identity.testing import FakeIssuer, generate_key
from authz.model import Context
from authz.responses import render_denial

METADATA = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
MARK = "EVIL"  # planted in attacker-controlled values; must never come back to the client


def b64(data: bytes | str | dict) -> str:
    if isinstance(data, dict):
        data = json.dumps(data)
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw(header: Any, payload: Any, signature: bytes = b"") -> str:
    return f"{b64(header)}.{b64(payload)}.{b64(signature)}"


def rsa_public_pem(idp: FakeIssuer) -> bytes:
    _, key = idp.keys[idp.current_kid]
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def hs256(secret: bytes, header: dict, payload: dict) -> str:
    signing_input = f"{b64(header)}.{b64(payload)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def attacker_token(idp: FakeIssuer, header: dict, **claims: Any) -> str:
    """Signed with a key the attacker owns, presented as coming from ``idp``."""
    key = generate_key("RS256")
    return encode_compact({"alg": "RS256", **header}, idp.claims(**claims), ALGORITHMS["RS256"], key)


def tamper(token: str, **claims: Any) -> str:
    h, p, s = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    payload.update(claims)
    return f"{h}.{b64(payload)}.{s}"


class Case(NamedTuple):
    id: str
    make: Callable[[FakeIssuer, FakeIssuer], dict[str, Any]]  # -> make_request kwargs
    reason: str
    error: str | None = "invalid_token"


def h(token: str) -> dict[str, Any]:
    return {"headers": bearer(token)}


def _key_mismatch(a: FakeIssuer, b: FakeIssuer) -> dict[str, Any]:
    ec_kid = a.rotate(alg="ES256")
    rsa_kid = next(k for k, (alg, _) in a.keys.items() if alg == "RS256")
    _, rsa_key = a.keys[rsa_kid]
    token = encode_compact({"alg": "RS256", "kid": ec_kid}, a.claims(), ALGORITHMS["RS256"], rsa_key)
    return h(token)


def _deep_payload(depth: int) -> str:
    return "{\"iss\":\"x\",\"n\":" + "[" * depth + "]" * depth + "}"


def _ecdsa_short_signature(a: FakeIssuer, b: FakeIssuer) -> dict[str, Any]:
    kid = a.rotate(alg="ES256")
    token = a.mint(kid=kid)
    head, payload, sig = token.split(".")
    return h(f"{head}.{payload}.{b64(base64.urlsafe_b64decode(sig + '==')[:40])}")


CASES = [
    # --- the algorithm ---------------------------------------------------------------------------
    Case("alg-none", lambda a, b: h(raw({"alg": "none", "typ": "JWT"}, a.claims())),
         "token.alg_not_allowed"),
    Case("alg-None-mixed-case", lambda a, b: h(raw({"alg": "nOnE"}, a.claims(), b"x")),
         "token.alg_not_allowed"),
    Case("hs256-with-rsa-public-key-pem",
         lambda a, b: h(hs256(rsa_public_pem(a), {"alg": "HS256", "kid": a.current_kid}, a.claims())),
         "token.alg_not_allowed"),
    Case("hs512-with-jwks-json",
         lambda a, b: h(hs256(json.dumps(a.jwks()).encode(), {"alg": "HS512"}, a.claims())),
         "token.alg_not_allowed"),
    Case("alg-missing", lambda a, b: h(raw({"kid": a.current_kid}, a.claims(), b"sig")),
         "token.malformed"),
    Case("alg-not-in-issuer-allow-list-es512",
         lambda a, b: h(raw({"alg": "ES512", "kid": a.current_kid}, a.claims(), b"sig")),
         "token.alg_not_allowed"),
    Case("rs256-header-on-an-ec-kid", _key_mismatch, "token.key_mismatch"),
    # --- where the key comes from ----------------------------------------------------------------
    Case("unknown-kid", lambda a, b: h(a.mint(header={"kid": "no-such-kid"})), "token.unknown_kid"),
    Case("path-traversal-kid",
         lambda a, b: h(attacker_token(a, {"kid": f"../../../../etc/passwd/{MARK}"})),
         "token.unknown_kid"),
    Case("sql-in-kid", lambda a, b: h(attacker_token(a, {"kid": f"' OR 1=1 -- {MARK}"})),
         "token.unknown_kid"),
    Case("kid-not-a-string", lambda a, b: h(a.mint(header={"kid": 7})), "token.malformed"),
    Case("jku-pointing-elsewhere",
         lambda a, b: h(attacker_token(a, {"kid": "attacker", "jku": f"https://{MARK}.example/jwks"})),
         "token.unknown_kid"),
    Case("x5u-pointing-elsewhere",
         lambda a, b: h(attacker_token(a, {"kid": "attacker", "x5u": f"https://{MARK}.example/c.pem"})),
         "token.unknown_kid"),
    Case("embedded-jwk-with-real-kid",
         lambda a, b: h(attacker_token(a, {"kid": a.current_kid,
                                           "jwk": public_jwk(generate_key("RS256"))})),
         "token.bad_signature"),
    Case("x5c-with-real-kid",
         lambda a, b: h(attacker_token(a, {"kid": a.current_kid, "x5c": ["MIIBIjANBgkqhkiG9w0B"]})),
         "token.bad_signature"),
    Case("issuer-a-claims-signed-with-issuer-b-key",
         lambda a, b: h(encode_compact({"alg": "RS256", "kid": b.current_kid}, a.claims(),
                                       ALGORITHMS["RS256"], b.keys[b.current_kid][1])),
         "token.unknown_kid"),
    Case("issuer-a-claims-and-kid-signed-with-issuer-b-key",
         lambda a, b: h(encode_compact({"alg": "RS256", "kid": a.current_kid}, a.claims(),
                                       ALGORITHMS["RS256"], b.keys[b.current_kid][1])),
         "token.bad_signature"),
    # --- signature -------------------------------------------------------------------------------
    Case("tampered-subject", lambda a, b: h(tamper(a.mint(), sub="admin")), "token.bad_signature"),
    Case("empty-signature", lambda a, b: h(a.mint().rsplit(".", 1)[0] + "."), "token.bad_signature"),
    Case("ecdsa-signature-wrong-length", _ecdsa_short_signature, "token.bad_signature"),
    Case("crit-unknown-extension", lambda a, b: h(a.mint(header={"crit": ["exp", MARK]})),
         "token.crit_unsupported"),
    # --- claims ----------------------------------------------------------------------------------
    Case("expired", lambda a, b: h(a.mint(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)),
         "token.expired"),
    Case("nbf-in-the-future", lambda a, b: h(a.mint(nbf=int(time.time()) + 3600)),
         "token.not_yet_valid"),
    Case("iat-in-the-future", lambda a, b: h(a.mint(iat=int(time.time()) + 3600)),
         "token.issued_in_future"),
    Case("wrong-iss", lambda a, b: h(a.mint(iss=f"https://{MARK}.example")), "token.unknown_issuer"),
    Case("iss-not-a-string", lambda a, b: h(a.mint(iss=[a.issuer])), "token.unknown_issuer"),
    Case("wrong-aud", lambda a, b: h(a.mint(aud=f"https://{MARK}.example/mcp")), "token.bad_audience"),
    Case("aud-list-without-us", lambda a, b: h(a.mint(aud=["https://other", "api://x"])),
         "token.bad_audience"),
    Case("missing-aud", lambda a, b: h(a.mint(aud=None)), "token.missing_claim"),
    Case("missing-exp", lambda a, b: h(a.mint(exp=None)), "token.missing_claim"),
    Case("exp-as-string", lambda a, b: h(a.mint(exp="9999999999")), "token.invalid_claim"),
    Case("exp-as-bool", lambda a, b: h(a.mint(exp=True)), "token.invalid_claim"),
    Case("missing-sub", lambda a, b: h(a.mint(sub=None)), "token.missing_claim"),
    # --- structure and JSON ----------------------------------------------------------------------
    Case("64-KiB-token", lambda a, b: h(a.mint(pad="x" * 64 * 1024)), "token.too_large"),
    Case("64-KiB-authorization-header", lambda a, b: {"headers": {"authorization": "Bearer " + "a" * 65536}},
         "token.too_large"),
    Case("non-base64url-segments", lambda a, b: h("ab+c.de/f.gh=="), "token.malformed"),
    Case("non-b64token-characters", lambda a, b: h(f"{MARK}$$.{MARK}!!.%%"), "token.malformed",
         "invalid_token"),
    Case("trailing-zero-width-space", lambda a, b: h(a.mint() + "\u200b"), "token.malformed", "invalid_token"),
    Case("exp-1e308", lambda a, b: h(a.mint(exp=1e308)), "token.lifetime_too_long", "invalid_token"),
    Case("lifetime-25h", lambda a, b: h(a.mint(iat=time.time(), exp=time.time() + 25 * 3600)),
         "token.lifetime_too_long", "invalid_token"),
    Case("not-a-jwt", lambda a, b: h("opaque-token-value"), "token.malformed"),
    Case("jwe-five-parts", lambda a, b: h("eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d"), "token.malformed"),
    Case("payload-json-array", lambda a, b: h(raw({"alg": "RS256"}, "[1,2]", b"s")), "token.malformed"),
    Case("payload-not-utf8", lambda a, b: h(raw({"alg": "RS256"}, b"\xff\xfe{}", b"s")),
         "token.malformed"),
    Case("payload-nan", lambda a, b: h(raw({"alg": "RS256"}, '{"exp": NaN}', b"s")), "token.malformed"),
    Case("payload-huge-integer", lambda a, b: h(raw({"alg": "RS256"}, '{"exp": ' + "9" * 5000 + "}",
                                                   b"s")), "token.malformed"),
    Case("payload-nested-10000-deep", lambda a, b: h(raw({"alg": "RS256"}, _deep_payload(10_000), b"s")),
         "token.too_large"),  # at the default 16 KiB limit; see test_deep_nesting_... below
    Case("payload-nested-40-deep", lambda a, b: h(raw({"alg": "RS256"}, _deep_payload(40), b"s")),
         "token.too_deep"),
    Case("payload-unpaired-surrogate",  # valid JSON grammar, not Unicode: nothing could write it back
         lambda a, b: h(raw({"alg": "RS256", "kid": a.current_kid},
                            f'{{"iss":"{a.issuer}","sub":"\\ud800admin"}}', b"s")),
         "token.malformed"),
    Case("duplicate-claim-keys",
         lambda a, b: h(raw({"alg": "RS256", "kid": a.current_kid},
                            f'{{"iss":"{a.issuer}","sub":"alice","sub":"admin"}}', b"s")),
         "token.duplicate_key"),
    Case("duplicate-header-keys", lambda a, b: h(raw('{"alg":"RS256","alg":"none"}', a.claims(), b"s")),
         "token.duplicate_key"),
    # --- the Authorization header itself ---------------------------------------------------------
    Case("no-credentials", lambda a, b: {"headers": {}}, "token.missing", None),
    Case("bearer-without-token", lambda a, b: {"headers": {"authorization": "Bearer"}},
         "credentials.malformed", "invalid_request"),
    Case("bearer-with-spaces-only", lambda a, b: {"headers": {"authorization": "Bearer    "}},
         "credentials.malformed", "invalid_request"),
    Case("bearer-two-tokens-space", lambda a, b: h(f"{a.mint()} {a.mint(sub='admin')}"),
         "credentials.malformed", "invalid_request"),
    Case("two-authorization-headers",
         lambda a, b: {"headers": bearer(a.mint()),
                       "header_lists": {"authorization": (f"Bearer {a.mint()}",
                                                          f"Bearer {a.mint(sub='admin')}")}},
         "credentials.multiple", "invalid_request"),
    Case("authorization-headers-joined-by-envoy",
         lambda a, b: {"headers": {"authorization": f"Bearer {a.mint()},Bearer {a.mint(sub='admin')}"}},
         "credentials.multiple", "invalid_request"),
    Case("bearer-and-api-key",
         lambda a, b: {"headers": {**bearer(a.mint()), "x-api-key": API_KEY}},
         "credentials.multiple", "invalid_request"),
    Case("basic-scheme", lambda a, b: {"headers": {"authorization": "Basic YWRtaW46YWRtaW4="}},
         "credentials.bad_scheme", None),
    Case("token-without-scheme", lambda a, b: {"headers": {"authorization": a.mint()}},
         "credentials.bad_scheme", None),
    Case("empty-authorization", lambda a, b: {"headers": {"authorization": "  "}},
         "credentials.malformed", "invalid_request"),
    Case("unknown-api-key", lambda a, b: {"headers": {"x-api-key": "sk-" + "0" * 40}},
         "api_key.invalid"),
    Case("malformed-api-key", lambda a, b: {"headers": {"x-api-key": f"short{MARK}"}},
         "credentials.malformed", "invalid_request"),
]


def test_the_suite_is_at_least_thirty_cases():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_hostile_input_is_a_401_with_a_specific_reason(case: Case, idp, idp_b, stage):
    request = make_request(**case.make(idp, idp_b))
    ctx_error: Deny | None = None
    try:
        await asyncio.wait_for(_run(stage, request), timeout=5)
    except Deny as exc:
        ctx_error = exc
    assert ctx_error is not None, "accepted"
    assert ctx_error.status == 401
    assert ctx_error.reason == case.reason
    challenge = ctx_error.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{METADATA}"' in challenge
    if case.error is None:
        assert "error=" not in challenge
    else:
        assert f'error="{case.error}"' in challenge
        assert 'error_description="' in challenge
    assert challenge.isascii() and challenge.isprintable()
    assert MARK not in challenge and MARK not in ctx_error.message
    denial = render_denial(ctx_error, request)
    assert denial.status == 401 and denial.headers["x-authz-reason"] == case.reason
    assert MARK.encode() not in denial.body


async def _run(stage, request):
    await stage.on_request(Context(request=request))


async def test_deep_nesting_is_refused_without_a_crash_when_the_size_limit_allows_it(idp, build):
    stage = build(identity_config(idp, max_token_bytes=1024 * 1024))
    for depth in (10_000, 100_000):
        token = raw({"alg": "RS256"}, _deep_payload(depth), b"s")
        with pytest.raises(Deny) as info:
            await _run(stage, make_request(bearer(token)))
        assert info.value.reason == "token.too_deep"
        assert 'error="invalid_token"' in info.value.headers["www-authenticate"]


async def test_a_kid_flood_costs_the_idp_one_fetch(idp, stage):
    await _run(stage, make_request(bearer(idp.mint())))  # first fetch
    fetches = idp.hits["/jwks"]
    for i in range(200):
        with pytest.raises(Deny) as info:
            await _run(stage, make_request(bearer(idp.mint(header={"kid": f"random-{i}"}))))
        assert info.value.reason == "token.unknown_kid"
    assert idp.hits["/jwks"] - fetches <= 1
