"""The Check→Process hand-off on the wire: one ``Handoff`` as one JSON text in Envoy's dynamic
metadata (``envoy.filters.http.ext_authz`` → ``authz``), forwarded by Envoy to ext_proc.

A ``Struct`` holds numbers as doubles: a JSON-RPC id of 7 came back 7.0, and an id past 2**53
not at all. So the hand-off is our own JSON text in one string field, and every value comes back
with the type it left with."""

from __future__ import annotations

import json
from typing import Any

import orjson

from authz.model import ANONYMOUS, Action, Handoff, Metering, Principal, RateCharge, Reservation

FIELD = "authz"


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer beyond 64 bits (a claim): the standard encoder writes it exactly
        # ... and says so with a leading space (still JSON): orjson would read that integer back
        # as a float, so ``decode`` reads such a text with the standard decoder.
        return " " + json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _loads(text: str) -> Any:
    return json.loads(text) if text.startswith(" ") else orjson.loads(text)


def _id(text: str) -> Any:
    """A JSON-RPC id as written by ``json.dumps``: orjson reads an integer past 64 bits as a
    float (an id is never a float), the standard decoder reads it exactly."""
    value = orjson.loads(text)
    return json.loads(text) if type(value) is float else value


def encode(h: Handoff) -> dict[str, str]:
    """The dynamic metadata fields carrying ``h``."""
    doc: dict[str, Any] = {"rb": h.request_body, "pb": h.response_body}
    if h.body_key:
        doc["key"] = h.body_key
    if h.principal is not ANONYMOUS:
        p = h.principal
        doc["p"] = {"sub": p.subject, "iss": p.issuer, "email": p.email, "tenant": p.tenant,
                    "client": p.client, "roles": sorted(p.roles), "scopes": sorted(p.scopes),
                    "claims": dict(p.claims), "cred": p.credential}
    if h.source_address:
        doc["src"] = h.source_address
    if h.checked_at:
        doc["at"] = h.checked_at
    if h.action is not None:
        a = h.action
        doc["a"] = {"protocol": a.protocol, "kind": a.kind, "name": a.name, "model": a.model,
                    "id": json.dumps(a.jsonrpc_id), "stream": a.stream, "notification": a.notification,
                    "max_tokens": a.max_tokens}
        if a.revision is not None:
            doc["a"]["rev"] = a.revision
        if a.retry:
            doc["a"]["retry"] = True
    if h.headers:
        doc["h"] = h.headers
    if h.filter_tools:
        doc["tools"] = True
    if h.session_owner:
        doc["so"] = h.session_owner
    if h.metering is not None:
        m = h.metering
        doc["m"] = {"model": m.model, "stream": m.stream, "pt": m.prompt_tokens,
                    "r": [[r.id, r.key, r.amount, r.unit] for r in m.reservations]}
    if h.rate_charges:
        doc["rc"] = [[c.key, c.interval_us, c.cost] for c in h.rate_charges]
    if h.response_rule:
        doc["rr"] = h.response_rule
    if h.restore_key:
        doc["rk"] = h.restore_key
    return {FIELD: _dumps(doc)}


def decode(text: str) -> Handoff:
    """The hand-off from the text ``encode`` wrote."""
    doc = _loads(text)
    h = Handoff(request_body=doc.get("rb", ""), response_body=doc.get("pb", ""), body_key=doc.get("key", ""),
                source_address=doc.get("src", ""), checked_at=doc.get("at", 0.0), headers=doc.get("h", {}),
                filter_tools=doc.get("tools", False), response_rule=doc.get("rr", ""),
                restore_key=doc.get("rk", ""), session_owner=doc.get("so", ""))
    p = doc.get("p")
    if p is not None:
        h.principal = Principal(subject=p["sub"], issuer=p["iss"], email=p["email"], tenant=p["tenant"],
                                client=p["client"], roles=frozenset(p["roles"]), scopes=frozenset(p["scopes"]),
                                claims=p["claims"], credential=p["cred"])
    a = doc.get("a")
    if a is not None:
        h.action = Action(protocol=a["protocol"], kind=a["kind"], name=a["name"], model=a["model"],
                          jsonrpc_id=_id(a["id"]), stream=a["stream"], notification=a["notification"],
                          max_tokens=a["max_tokens"], revision=a.get("rev"), retry=a.get("retry", False))
    m = doc.get("m")
    if m is not None:
        h.metering = Metering(reservations=tuple(Reservation(*r) for r in m["r"]), model=m["model"],
                              stream=m["stream"], prompt_tokens=m.get("pt", 0))
    rc = doc.get("rc")
    if rc:
        h.rate_charges = tuple(RateCharge(*c) for c in rc)
    return h
