"""JOSE primitives we own: strict base64url and JSON, JWK parsing, JWS signatures.

Only the standard library and ``cryptography`` are imported here, so ``authz.identity.assertion`` (which a
backend imports) can share this code without pulling in aiohttp, pydantic or Prometheus.

The security properties are decided here, by construction rather than by option:

- only asymmetric algorithms exist in ``ALGORITHMS``; ``none`` and every HMAC algorithm are
  unknown names, so "HS256 signed with the issuer's RSA public key" cannot even be attempted;
- a key verifies only the algorithms its type allows (an EC P-256 key never verifies RS256);
- RSA keys shorter than 2048 bits are refused when the JWK set is loaded;
- JSON with duplicate keys, ``NaN``/``Infinity``, non-UTF-8 bytes, unpaired surrogate escapes
  or deep nesting is refused, and a ``RecursionError`` from the decoder becomes an ordinary
  rejection.

Failures raise ``JoseError`` with a short ``code`` (``malformed``, ``duplicate_key``,
``too_deep``, ``bad_signature``...). Callers map codes to their own exceptions.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeGuard

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from authz.jsontext import has_unpaired_surrogate

MIN_RSA_BITS = 2048
MAX_JSON_DEPTH = 16  # real JOSE headers and claim sets are 2-4 levels deep
MAX_KEYS_PER_SET = 64


class JoseError(Exception):
    """A JOSE object was refused. ``code`` is a short, stable, input-free word."""

    def __init__(self, code: str, detail: str = "") -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}" if detail else code)


# --- algorithms ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class Algorithm:
    name: str
    kty: str  # the JWK key type this algorithm needs: RSA | EC | OKP
    hash: type[hashes.HashAlgorithm] | None = None
    pss: bool = False
    curve: str | None = None  # for EC: the JWK crv it needs
    coordinate_bytes: int = 0  # for EC: size of r and s in the JWS signature


ALGORITHMS: Mapping[str, Algorithm] = {
    a.name: a for a in (
        Algorithm("RS256", "RSA", hashes.SHA256),
        Algorithm("RS384", "RSA", hashes.SHA384),
        Algorithm("RS512", "RSA", hashes.SHA512),
        Algorithm("PS256", "RSA", hashes.SHA256, pss=True),
        Algorithm("PS384", "RSA", hashes.SHA384, pss=True),
        Algorithm("PS512", "RSA", hashes.SHA512, pss=True),
        Algorithm("ES256", "EC", hashes.SHA256, curve="P-256", coordinate_bytes=32),
        Algorithm("ES384", "EC", hashes.SHA384, curve="P-384", coordinate_bytes=48),
        Algorithm("EdDSA", "OKP"),
    )
}

_ECDSA = {a.name: ec.ECDSA(a.hash()) for a in ALGORITHMS.values() if a.kty == "EC" and a.hash}
_EC_CURVES: Mapping[str, type[ec.EllipticCurve]] = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1}
_EC_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384"}


# --- base64url and JSON --------------------------------------------------------------------------

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """Strict unpadded base64url (RFC 7515 §2): any other character is an error, not skipped."""
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise JoseError("malformed", "not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise JoseError("malformed", "not base64url") from None


class _DuplicateKey(ValueError):
    pass


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth_exceeds(value: Any, limit: int) -> bool:
    # Iterative, so the check itself cannot recurse too deep.
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_json_object(data: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """Decode a JSON object strictly: UTF-8 only, no duplicate keys, no NaN, bounded nesting."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise JoseError("malformed", "not UTF-8") from None
    try:
        value = json.loads(text, object_pairs_hook=_object_without_duplicates,
                           parse_constant=_refuse_constant)
    except _DuplicateKey:
        raise JoseError("duplicate_key", "a JSON object repeats a key") from None
    except RecursionError:
        raise JoseError("too_deep", "JSON nested too deep") from None
    except ValueError:  # JSONDecodeError, over-long integers, NaN/Infinity
        raise JoseError("malformed", "not JSON") from None
    if not isinstance(value, dict):
        raise JoseError("malformed", "not a JSON object")
    if _depth_exceeds(value, max_depth):
        raise JoseError("too_deep", "JSON nested too deep")
    if has_unpaired_surrogate(text, value):
        raise JoseError("malformed", "an unpaired surrogate escape (not Unicode)")
    return value


def dump_json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


# --- compact JWS ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class CompactJws:
    """A compact JWS split and decoded, not yet verified."""

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


def split_compact(token: str, *, max_bytes: int) -> CompactJws:
    """Split ``header.payload.signature`` and decode header and payload (JSON objects).

    ``max_bytes`` is checked before anything else is done with the token.
    """
    if len(token) > max_bytes:
        raise JoseError("too_large", "token too large")
    parts = token.split(".")
    if len(parts) != 3:
        raise JoseError("malformed", "not a compact JWS")  # includes 5-part JWE
    header_b64, payload_b64, signature_b64 = parts
    if not header_b64 or not payload_b64:
        raise JoseError("malformed", "empty segment")
    header = parse_json_object(b64url_decode(header_b64))
    payload = parse_json_object(b64url_decode(payload_b64))
    signature = b64url_decode(signature_b64)
    return CompactJws(header, payload, f"{header_b64}.{payload_b64}".encode("ascii"), signature)


# --- keys ----------------------------------------------------------------------------------------

PublicKey = (rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
             | ed448.Ed448PublicKey)
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


@dataclasses.dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key from a JWK set (or PEM), with what it may be used for."""

    kid: str | None
    kty: str
    crv: str | None
    key: Any  # one of PublicKey
    alg: str | None = None  # the JWK's own "alg", if it pinned one
    thumbprint: str = ""

    def fits(self, alg: Algorithm) -> bool:
        """Whether this key may verify ``alg``: key type (and curve) must match the algorithm."""
        if self.alg is not None and self.alg != alg.name:
            return False
        if self.kty != alg.kty:
            return False
        if alg.kty == "EC":
            return self.crv == alg.curve
        return True


def _b64_uint(jwk: Mapping[str, Any], name: str) -> int:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise JoseError("bad_key", f"missing {name}")
    return int.from_bytes(b64url_decode(value), "big")


def _b64_bytes(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise JoseError("bad_key", f"missing {name}")
    return b64url_decode(value)


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK."""
    members = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
    required = members.get(str(jwk.get("kty")))
    if required is None:
        raise JoseError("bad_key", "unsupported kty")
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return b64url_encode(hashlib.sha256(canonical.encode()).digest())


def parse_jwk(jwk: Any) -> VerificationKey:
    """Build a verification key from one public JWK. Private members are refused (a JWK set
    that carries private keys is misconfigured and we do not want to hold them)."""
    if not isinstance(jwk, dict):
        raise JoseError("bad_key", "not an object")
    if any(name in jwk for name in ("d", "p", "q", "dp", "dq", "qi", "k")):
        raise JoseError("bad_key", "private or symmetric key material")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise JoseError("bad_key", "key is not for signatures")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise JoseError("bad_key", "key_ops does not allow verify")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JoseError("bad_key", "kid is not a string")
    alg = jwk.get("alg")
    if alg is not None and (not isinstance(alg, str) or alg not in ALGORITHMS):
        raise JoseError("bad_key", "alg not supported")
    kty = jwk.get("kty")
    crv: str | None = None
    try:
        if kty == "RSA":
            n, e = _b64_uint(jwk, "n"), _b64_uint(jwk, "e")
            if n.bit_length() < MIN_RSA_BITS:
                raise JoseError("bad_key", f"RSA key shorter than {MIN_RSA_BITS} bits")
            key: Any = rsa.RSAPublicNumbers(e, n).public_key()
        elif kty == "EC":
            crv = jwk.get("crv")
            if not isinstance(crv, str) or crv not in _EC_CURVES:
                raise JoseError("bad_key", "unsupported curve")
            # EllipticCurvePublicNumbers.public_key() checks the point is on the curve.
            key = ec.EllipticCurvePublicNumbers(
                _b64_uint(jwk, "x"), _b64_uint(jwk, "y"), _EC_CURVES[crv]()).public_key()
        elif kty == "OKP":
            crv = jwk.get("crv")
            if crv == "Ed25519":
                key = ed25519.Ed25519PublicKey.from_public_bytes(_b64_bytes(jwk, "x"))
            elif crv == "Ed448":
                key = ed448.Ed448PublicKey.from_public_bytes(_b64_bytes(jwk, "x"))
            else:
                raise JoseError("bad_key", "unsupported curve")
        else:
            raise JoseError("bad_key", "unsupported kty")
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise JoseError("bad_key", f"invalid {kty} key") from exc
    return VerificationKey(kid=kid, kty=kty, crv=crv, key=key, alg=alg,
                           thumbprint=jwk_thumbprint(jwk))


def public_jwk(key: Any) -> dict[str, str]:
    """The public JWK (without kid/alg/use) of a public or private ``cryptography`` key."""
    if hasattr(key, "public_key"):
        key = key.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        return {"kty": "RSA", "n": b64url_encode(_uint_bytes(nums.n)),
                "e": b64url_encode(_uint_bytes(nums.e))}
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = _EC_CURVE_NAMES.get(key.curve.name)
        if crv is None:
            raise JoseError("bad_key", "unsupported curve")
        size = (key.curve.key_size + 7) // 8
        point = key.public_numbers()
        return {"kty": "EC", "crv": crv, "x": b64url_encode(point.x.to_bytes(size, "big")),
                "y": b64url_encode(point.y.to_bytes(size, "big"))}
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    if isinstance(key, ed448.Ed448PublicKey):
        return {"kty": "OKP", "crv": "Ed448", "x": b64url_encode(raw)}
    raise JoseError("bad_key", "unsupported key type")


def _uint_bytes(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def load_public_pem(data: bytes, *, kid: str | None = None) -> VerificationKey:
    """A verification key from a PEM public key (or certificate-free SubjectPublicKeyInfo)."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise JoseError("bad_key", "not a PEM public key") from exc
    jwk: dict[str, Any] = public_jwk(key)
    if kid is not None:
        jwk["kid"] = kid
    return parse_jwk(jwk)


class KeySet:
    """Keys of one issuer, looked up by ``kid``. Immutable once built."""

    __slots__ = ("_by_kid", "keys")

    def __init__(self, keys: Sequence[VerificationKey]) -> None:
        self.keys = tuple(keys[:MAX_KEYS_PER_SET])
        by_kid: dict[str, list[VerificationKey]] = {}
        for key in self.keys:
            if key.kid is not None:
                by_kid.setdefault(key.kid, []).append(key)
        self._by_kid = {kid: tuple(found) for kid, found in by_kid.items()}

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, kid: str | None, alg: Algorithm) -> VerificationKey | None:
        """The key for ``kid`` that fits ``alg``. Without a ``kid``, the only key that fits
        (a set with several candidates needs the token to name one)."""
        candidates = self.keys if kid is None else self._by_kid.get(kid, ())
        fitting = [k for k in candidates if k.fits(alg)]
        if kid is None and len(fitting) != 1:
            return None
        return fitting[0] if fitting else None

    def has_kid(self, kid: str | None) -> bool:
        return kid is None or kid in self._by_kid


def parse_jwks(document: Any) -> tuple[KeySet, list[str]]:
    """A key set from a JWKS document. Unusable keys are skipped; their problems are returned
    (without key material) so the caller can log them."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JoseError("bad_jwks", "not a JWK set")
    keys: list[VerificationKey] = []
    problems: list[str] = []
    for index, jwk in enumerate(document["keys"]):
        try:
            keys.append(parse_jwk(jwk))
        except JoseError as exc:
            kid = jwk.get("kid") if isinstance(jwk, dict) else None
            problems.append(f"key {index} (kid {str(kid)[:64]!r}): {exc.detail or exc.code}")
    return KeySet(keys), problems


# --- signatures ----------------------------------------------------------------------------------

def verify_signature(alg: Algorithm, key: VerificationKey, signing_input: bytes,
                     signature: bytes) -> None:
    """Raise ``JoseError('bad_signature')`` unless ``signature`` is valid for ``alg`` and ``key``.

    The caller must have checked ``key.fits(alg)``; we check again because a mismatch here would
    be exactly the algorithm-confusion bug this module exists to prevent.
    """
    if not key.fits(alg):
        raise JoseError("key_mismatch", "key type does not match the algorithm")
    if not signature:
        raise JoseError("bad_signature", "empty signature")
    try:
        if alg.kty == "RSA":
            assert alg.hash is not None
            pad: padding.AsymmetricPadding
            if alg.pss:
                # RFC 7518 §3.5 fixes the salt length to the hash size; AUTO accepts that and
                # costs no security (PSS does not rely on the verifier pinning the salt length).
                pad = padding.PSS(mgf=padding.MGF1(alg.hash()), salt_length=padding.PSS.AUTO)
            else:
                pad = padding.PKCS1v15()
            key.key.verify(signature, signing_input, pad, alg.hash())
        elif alg.kty == "EC":
            assert alg.hash is not None
            size = alg.coordinate_bytes
            if len(signature) != 2 * size:
                raise JoseError("bad_signature", "wrong signature length")
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            key.key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(alg.hash()))
        else:
            key.key.verify(signature, signing_input)
    except InvalidSignature:
        raise JoseError("bad_signature", "signature does not verify") from None


def sign(alg: Algorithm, private_key: Any, signing_input: bytes) -> bytes:
    """A JWS signature (ES256/ES384 as raw r||s, RS*/PS*, EdDSA)."""
    if alg.kty == "EC":
        der = private_key.sign(signing_input, _ECDSA[alg.name])
        r, s = decode_dss_signature(der)
        return r.to_bytes(alg.coordinate_bytes, "big") + s.to_bytes(alg.coordinate_bytes, "big")
    if alg.kty == "RSA":
        assert alg.hash is not None
        digest = alg.hash()
        pad: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
            if alg.pss else padding.PKCS1v15())
        signature: bytes = private_key.sign(signing_input, pad, digest)
        return signature
    signature = private_key.sign(signing_input)
    return signature


def encode_compact(header: Mapping[str, Any], payload: Mapping[str, Any], alg: Algorithm,
                   private_key: Any) -> str:
    signing_input = f"{b64url_encode(dump_json(header))}.{b64url_encode(dump_json(payload))}"
    signature = sign(alg, private_key, signing_input.encode("ascii"))
    return f"{signing_input}.{b64url_encode(signature)}"


def is_number(value: Any) -> TypeGuard[int | float]:
    """A JSON number usable as a NumericDate: int or finite float, never bool. An integer must
    fit in 64 bits (10**400 is valid JSON, but no float: ``exp`` is kept as one)."""
    return (isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63) or (
        isinstance(value, float) and math.isfinite(value))
