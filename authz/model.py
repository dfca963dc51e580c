"""Our own request model: what the pipeline sees, independent of Envoy's protos.

The Envoy adapters (``authz.envoy``) build these from ``CheckRequest`` / ``ProcessingRequest``
and turn the mutations recorded here back into protos. Everything in between is plain Python.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from authz.request import Action, Outgoing, Reader, Request, RequestView

__all__ = ["ANONYMOUS", "Action", "Context", "Exchange", "Handoff", "Metering", "Mutations", "Principal",
           "RateCharge", "Request", "RequestView", "Reservation"]


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


@dataclasses.dataclass(frozen=True, slots=True)
class Reservation:
    """Budget reserved in ``Check``, settled in ``Process`` against the upstream's usage."""

    id: str
    key: str
    amount: int
    unit: str


@dataclasses.dataclass(frozen=True, slots=True)
class RateCharge:
    """A rate limit Check charged the request: what giving it back takes (its key and the GCRA
    emission interval times the cost)."""

    key: str
    interval_us: float
    cost: int = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Metering:
    reservations: tuple[Reservation, ...]
    model: str
    stream: bool = False
    prompt_tokens: int = 0  # the prompt's estimate: charged with the output streamed when a stream is cut


# "partial": Envoy's BUFFERED_PARTIAL: the whole body when it fits Envoy's buffer (headers held
# until it is answered), else the first buffer-full with more to come, which Process refuses.
# "duplex": Envoy's FULL_DUPLEX_STREAMED: chunks as they come, and Process sends the body back
# in pieces of its own, when it likes (a held answer's text after a pause: ``Exchange.flush_at``).
BODY_MODES = ("", "streamed", "duplex", "partial", "buffered")


@dataclasses.dataclass(slots=True)
class Handoff:
    """Everything ``Process`` needs of what ``Check`` decided, as one typed value (encoded at the
    edge by ``authz.envoy.handoff``, carried by Envoy as dynamic metadata).

    Body modes: "" (Process sees nothing of it), "streamed" (chunks pass through as they come),
    "duplex" (chunks as they come; what goes out is sent when Process likes),
    "partial" (the whole body if it fits Envoy's buffer, its headers held) or "buffered" (the
    whole body, which may be replaced). Process-side decisions evaluate the
    same conditions as Check on the same facts: the principal, the source address, the headers
    conditions read (as the client sent them, before Check's mutations) and Check's clock.
    """

    request_body: str = ""
    response_body: str = ""
    body_key: str = ""              # the rewritten request body, kept in the BodyStash
    principal: Principal = ANONYMOUS
    source_address: str = ""
    checked_at: float = 0.0         # time.time() when Check decided
    action: Action | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    filter_tools: bool = False
    metering: Metering | None = None
    response_rule: str = ""         # the redaction rule that scans the answer
    restore_key: str = ""           # the request's placeholders, kept in the PlaceholderStore
    session_owner: str = ""         # MCP initialize: who the session id in the answer belongs to
    # The rate limits Check charged: given back when Process refuses the request before it goes
    # upstream (budget reservations travel in ``metering``).
    rate_charges: tuple[RateCharge, ...] = ()

    def want_body(self, which: str, mode: str) -> None:
        """Ask for a body; when two stages ask, the mode that sees more wins (buffered, then
        partial, then streamed)."""
        assert which in ("request", "response") and mode in BODY_MODES[1:]
        attr = f"{which}_body"
        if BODY_MODES.index(mode) > BODY_MODES.index(getattr(self, attr)):
            setattr(self, attr, mode)

    @property
    def needed(self) -> bool:
        """Whether Process has anything to do for this request."""
        return bool(self.request_body or self.response_body or self.session_owner)

    def request_for_conditions(self, request: Request) -> Request:
        """``request`` as Check saw it, for evaluating conditions in Process."""
        return Request(id=request.id, method=request.method, scheme=request.scheme, host=request.host,
                       path=request.path, headers=self.headers, source_address=self.source_address)


_DEFAULT_READER = Reader()


@dataclasses.dataclass(slots=True)
class Context:
    """Per-request state handed from stage to stage during ``Check``.

    ``view`` is the one reading of the request (the pipeline's reader makes it; a context built
    without one reads the request with the default protocol routes). ``facts`` collects what
    later stages and the audit record need (rule id, route, findings): plain JSON-able data,
    never raw tokens or PII. ``handoff`` is what Process will know; ``outgoing`` the body as it
    will be forwarded, when a stage rewrites it.
    """

    request: Request
    view: RequestView = dataclasses.field(default=None)  # type: ignore[assignment]  # set in __post_init__
    principal: Principal = ANONYMOUS
    mutations: Mutations = dataclasses.field(default_factory=Mutations)
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    handoff: Handoff = dataclasses.field(default_factory=Handoff)
    outgoing: Outgoing | None = None
    model_override: str | None = None  # the model policy rewrote the request to
    # What to give back when the request does not go upstream after all (a later stage refused
    # it, or Envoy stopped waiting for the answer): see ``Pipeline.release``.
    on_refusal: list[Callable[[], Awaitable[None]]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.view is None:
            self.view = _DEFAULT_READER.read(self.request)

    @property
    def action(self) -> Action:
        return self.view.action

    @property
    def model(self) -> str | None:
        """The model the request will reach (after a policy rewrite)."""
        return self.model_override or self.view.action.model

    def rewrite(self) -> Outgoing:
        """The body as it will be forwarded, for a stage about to change it."""
        if self.outgoing is None:
            self.outgoing = Outgoing(self.view.body)
        return self.outgoing

    def want_body(self, which: str, mode: str) -> None:
        self.handoff.want_body(which, mode)


@dataclasses.dataclass(slots=True)
class Exchange:
    """Per-stream state for ``Process`` (ext_proc): one HTTP request and its response.

    ``handoff`` is what ``Check`` left for this request (empty when it left nothing).
    ``mutations`` is reset before each phase; the adapter sends it back as that phase's answer.
    """

    request: Request
    handoff: Handoff = dataclasses.field(default_factory=Handoff)
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
    # Duplex answers: when (time.monotonic()) Process runs on_response_pause if no chunk came (0: never).
    flush_at: float = 0.0
    # Duplex answers: a stage ended the answer before the upstream did (a refusal is its last
    # event): Envoy is told the body ended, and nothing more of the upstream's goes out.
    answer_closed: bool = False
    # Process refused the request before it went upstream: what Check took is given back
    # (``Pipeline.release``) and nothing is settled.
    refused: bool = False

    def body_mode(self, which: str) -> str:
        return self.handoff.request_body if which == "request" else self.handoff.response_body
