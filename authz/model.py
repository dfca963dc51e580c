"""Our own request model: what the pipeline sees, independent of Envoy's protos.

The Envoy adapters (``authz.envoy``) build these from ``CheckRequest`` / ``ProcessingRequest``
and turn the mutations recorded here back into protos. Everything in between is plain Python.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(slots=True)
class Request:
    """One HTTP request as Envoy describes it to ``Check`` (or to ``Process`` at request headers).

    Treat it as read-only: stages change what goes upstream through ``Mutations``, never here.
    (Not ``frozen``: a frozen dataclass's ``__init__`` costs ~2 µs more per request.)

    ``headers`` keys are lower-case. When the client sent a header more than once Envoy joins the
    values with ``,`` in ``headers``; ``header_lists`` keeps the individual values where Envoy
    reported them separately (``encode_raw_headers``), so stages that must refuse duplicates can.
    """

    id: str
    method: str
    scheme: str
    host: str
    path: str
    headers: Mapping[str, str]
    body: bytes = b""
    body_truncated: bool = False
    protocol: str = ""
    source_address: str = ""
    header_lists: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    context_extensions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    path_only: str = dataclasses.field(init=False)  # the path without its query string

    def __post_init__(self) -> None:
        self.path_only = self.path.split("?", 1)[0]  # read by every stage: split once

    @property
    def query(self) -> str:
        parts = self.path.split("?", 1)
        return parts[1] if len(parts) == 2 else ""

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def header_values(self, name: str) -> tuple[str, ...]:
        """Every value the client sent for ``name`` (at least the joined one when not split)."""
        name = name.lower()
        if name in self.header_lists:
            return self.header_lists[name]
        value = self.headers.get(name)
        return () if value is None else (value,)


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """The verified caller: a person (or service) and the LLM client acting for them."""

    subject: str
    issuer: str = ""
    email: str | None = None
    tenant: str | None = None
    client: str | None = None
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    credential: str = "jwt"  # jwt | api_key | anonymous
    expires_at: float | None = None

    @property
    def anonymous(self) -> bool:
        return self.credential == "anonymous"


ANONYMOUS = Principal(subject="anonymous", credential="anonymous")


@dataclasses.dataclass(slots=True)
class Mutations:
    """What the pipeline asks Envoy to change. Header names are lower-case."""

    set_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    remove_headers: set[str] = dataclasses.field(default_factory=set)
    response_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: bytes | None = None  # replacement body (ext_proc only)
    clear_route_cache: bool = False

    def set_header(self, name: str, value: str) -> None:
        name = name.lower()
        self.remove_headers.discard(name)
        self.set_headers[name] = value

    def remove_header(self, name: str) -> None:
        name = name.lower()
        self.set_headers.pop(name, None)
        self.remove_headers.add(name)

    def replace_body(self, body: bytes) -> None:
        self.body = body


@dataclasses.dataclass(slots=True)
class Context:
    """Per-request state handed from stage to stage during ``Check``.

    ``facts`` collects what later stages and the audit record need (rule id, route, findings):
    plain JSON-able data, never raw tokens or PII. ``metadata`` is forwarded to Envoy as
    dynamic metadata, which is how ``Process`` learns what ``Check`` decided.
    """

    request: Request
    principal: Principal = ANONYMOUS
    mutations: Mutations = dataclasses.field(default_factory=Mutations)
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    action: Any = None  # authz.policy.actions.Action once the policy stage parsed the request
    # What Process (ext_proc) should see of this request's bodies: "" (nothing), "streamed"
    # (chunks pass through as they come) or "buffered" (the whole body, which may be rewritten).
    request_body_mode: str = ""
    response_body_mode: str = ""

    def want_body(self, which: str, mode: str) -> None:
        """Ask for a body; "buffered" wins over "streamed" when two stages ask."""
        assert which in ("request", "response") and mode in ("streamed", "buffered")
        attr = f"{which}_body_mode"
        if getattr(self, attr) != "buffered":
            setattr(self, attr, mode)


@dataclasses.dataclass(slots=True)
class Exchange:
    """Per-stream state for ``Process`` (ext_proc): one HTTP request and its response.

    ``check`` is the dynamic metadata ``Check`` left for this request (empty if it left none).
    ``mutations`` is reset before each phase; the adapter sends it back as that phase's answer.
    """

    request: Request
    check: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    request_body: bytes = b""
    response_status: int = 0
    response_headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    response_body: bytes = b""   # the whole body, in buffered mode
    response_chunk: bytes = b""  # the piece being handled now (all of it in buffered mode)
    response_end: bool = False
    mutations: Mutations = dataclasses.field(default_factory=Mutations)
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)  # for audit: JSON-safe only
    state: dict[str, Any] = dataclasses.field(default_factory=dict)  # stage-private working state
    phases: list[str] = dataclasses.field(default_factory=list)

    def request_body_now(self) -> bytes:
        """The request body as the stages before have left it (each may rewrite it in turn)."""
        return self.mutations.body if self.mutations.body is not None else self.request_body

    def body_mode(self, which: str) -> str:
        return str((self.check.get("process") or {}).get(f"{which}_body", ""))
