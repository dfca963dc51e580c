"""JOSE primitives: strict decoding, JWK parsing, signatures for every allowed algorithm."""

from __future__ import annotations

import json

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from authz.identity import jose
from authz.identity.testing import generate_key


def jwk_of(key, **extra):
    return {**jose.public_jwk(key), **extra}


@pytest.mark.parametrize("segment", ["ab=", "a+b", "a/b", "a b", "a.b", "abcde"])
def test_b64url_is_strict(segment):
    with pytest.raises(jose.JoseError) as info:
        jose.b64url_decode(segment)
    assert info.value.code == "malformed"


def test_b64url_round_trip():
    for data in (b"", b"\x00", b"\xff\xfe\xfd", bytes(range(256))):
        assert jose.b64url_decode(jose.b64url_encode(data)) == data


@pytest.mark.parametrize(("data", "code"), [
    (b'{"a":1,"a":2}', "duplicate_key"),
    (b'{"a":{"b":1,"b":1}}', "duplicate_key"),
    (b'{"a":NaN}', "malformed"),
    (b'{"a":-Infinity}', "malformed"),
    (b"[1]", "malformed"),
    (b'"x"', "malformed"),
    (b"\xff{}", "malformed"),
    ('{"a":1}'.encode("utf-16"), "malformed"),
    (b"\xef\xbb\xbf{}", "malformed"),
    (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "too_deep"),
    (b'{"a":' + b"[" * 20 + b"]" * 20 + b"}", "too_deep"),
    (b'{"a":' + b"1" * 5000 + b"}", "malformed"),
])
def test_json_is_strict(data, code):
    with pytest.raises(jose.JoseError) as info:
        jose.parse_json_object(data)
    assert info.value.code == code


def test_json_accepts_ordinary_claims():
    assert jose.parse_json_object(b'{"realm_access":{"roles":["a"]},"n":1.5}') == {
        "realm_access": {"roles": ["a"]}, "n": 1.5}


def test_split_compact_checks_size_first():
    with pytest.raises(jose.JoseError) as info:
        jose.split_compact("x" * 100, max_bytes=99)
    assert info.value.code == "too_large"


@pytest.mark.parametrize("token", ["a.b", "a.b.c.d.e", ".b.c", "a..c"])
def test_split_compact_needs_three_segments(token):
    with pytest.raises(jose.JoseError):
        jose.split_compact(token, max_bytes=1000)


def test_weak_rsa_keys_are_refused():
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(jose.JoseError, match="2048"):
        jose.parse_jwk(jwk_of(weak))


@pytest.mark.parametrize("extra", [{"d": "AAAA"}, {"use": "enc"}, {"key_ops": ["encrypt"]},
                                   {"alg": "HS256"}, {"kid": 5}])
def test_unusable_jwks_are_refused(extra):
    with pytest.raises(jose.JoseError):
        jose.parse_jwk(jwk_of(generate_key("ES256"), **extra))


def test_symmetric_and_unknown_keys_are_refused():
    for jwk in ({"kty": "oct", "k": "c2VjcmV0"}, {"kty": "XYZ"}, "not a dict",
                {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}):
        with pytest.raises(jose.JoseError):
            jose.parse_jwk(jwk)


def test_ec_point_not_on_the_curve_is_refused():
    jwk = jwk_of(generate_key("ES256"))
    jwk["y"] = jose.b64url_encode(b"\x01" * 32)
    with pytest.raises(jose.JoseError):
        jose.parse_jwk(jwk)


@pytest.mark.parametrize("crv", [["P-256"], {"P-256": 1}, 256, None])
def test_ec_curve_that_is_not_a_string_is_a_bad_key(crv):
    jwk = jwk_of(generate_key("ES256"), crv=crv)
    with pytest.raises(jose.JoseError) as info:
        jose.parse_jwk(jwk)
    assert info.value.code == "bad_key"


def test_parse_jwks_skips_bad_keys_and_reports_them():
    good = jwk_of(generate_key("ES256"), kid="good")
    keys, problems = jose.parse_jwks({"keys": [good, {"kty": "oct", "k": "AA", "kid": "bad"}]})
    assert len(keys) == 1 and len(problems) == 1 and "bad" in problems[0]
    with pytest.raises(jose.JoseError):
        jose.parse_jwks({"nokeys": []})


def test_key_type_must_fit_the_algorithm():
    ec_key = jose.parse_jwk(jwk_of(generate_key("ES256")))
    rsa_key = jose.parse_jwk(jwk_of(generate_key("RS256")))
    ed_key = jose.parse_jwk(jwk_of(generate_key("EdDSA")))
    a = jose.ALGORITHMS
    assert ec_key.fits(a["ES256"]) and not ec_key.fits(a["ES384"]) and not ec_key.fits(a["RS256"])
    assert rsa_key.fits(a["RS256"]) and rsa_key.fits(a["PS512"]) and not rsa_key.fits(a["EdDSA"])
    assert ed_key.fits(a["EdDSA"]) and not ed_key.fits(a["ES256"])
    pinned = jose.parse_jwk(jwk_of(generate_key("RS256"), alg="RS256"))
    assert pinned.fits(a["RS256"]) and not pinned.fits(a["PS256"])
    with pytest.raises(jose.JoseError) as info:
        jose.verify_signature(a["RS256"], ec_key, b"x", b"sig")
    assert info.value.code == "key_mismatch"


def test_keyset_lookup_by_kid_and_without_kid():
    one = jose.parse_jwk(jwk_of(generate_key("ES256"), kid="one"))
    two = jose.parse_jwk(jwk_of(generate_key("ES256"), kid="two"))
    rsa_key = jose.parse_jwk(jwk_of(generate_key("RS256"), kid="r"))
    es256 = jose.ALGORITHMS["ES256"]
    assert jose.KeySet([one, two]).find("two", es256) is two
    assert jose.KeySet([one, two]).find("three", es256) is None
    assert jose.KeySet([one, two]).find(None, es256) is None  # ambiguous: the token must say
    assert jose.KeySet([one, rsa_key]).find(None, es256) is one  # the only one that fits


@pytest.mark.parametrize("alg", list(jose.ALGORITHMS))
def test_sign_and_verify_every_algorithm(alg):
    private = generate_key(alg)
    key = jose.parse_jwk(jwk_of(private, kid="k"))
    token = jose.encode_compact({"alg": alg, "kid": "k"}, {"sub": "x"}, jose.ALGORITHMS[alg], private)
    jws = jose.split_compact(token, max_bytes=10_000)
    jose.verify_signature(jose.ALGORITHMS[alg], key, jws.signing_input, jws.signature)
    with pytest.raises(jose.JoseError) as info:
        jose.verify_signature(jose.ALGORITHMS[alg], key, jws.signing_input + b"x", jws.signature)
    assert info.value.code == "bad_signature"


@pytest.mark.parametrize("alg", ["RS256", "RS512", "PS256", "PS384", "ES256", "ES384", "EdDSA"])
def test_tokens_made_by_pyjwt_verify(alg):
    """Interop: an independent implementation's tokens pass our verifier."""
    private = generate_key(alg)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    token = pyjwt.encode({"sub": "x"}, pem, algorithm=alg, headers={"kid": "k"})
    jws = jose.split_compact(token, max_bytes=10_000)
    key = jose.parse_jwk(jwk_of(private, kid="k"))
    jose.verify_signature(jose.ALGORITHMS[alg], key, jws.signing_input, jws.signature)


def test_pem_public_keys_load_and_thumbprint_is_rfc7638():
    private = generate_key("ES256")
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    key = jose.load_public_pem(pem, kid="pem")
    assert key.kid == "pem" and key.kty == "EC" and key.crv == "P-256"
    # RFC 7638 §3.1 example key and thumbprint
    example = {"kty": "RSA", "e": "AQAB", "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPe"
        "bWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY36"
        "8QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4l"
        "Fd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")}
    assert jose.jwk_thumbprint(example) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_ec_signature_of_wrong_length_is_a_bad_signature():
    private = generate_key("ES256")
    key = jose.parse_jwk(jwk_of(private))
    der_like = private.sign(b"x", ec.ECDSA(jose.ALGORITHMS["ES256"].hash()))  # DER, not r||s
    with pytest.raises(jose.JoseError) as info:
        jose.verify_signature(jose.ALGORITHMS["ES256"], key, b"x", der_like)
    assert info.value.code == "bad_signature"


def test_is_number():
    assert jose.is_number(1) and jose.is_number(1.5)
    assert not any(jose.is_number(v) for v in (True, "1", None, float("inf"), float("nan")))


def test_dump_json_refuses_nan():
    with pytest.raises(ValueError):
        jose.dump_json({"a": float("nan")})
    assert json.loads(jose.dump_json({"a": "é"})) == {"a": "é"}
