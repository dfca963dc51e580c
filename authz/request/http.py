"""One HTTP request as Envoy describes it: the input every reading starts from."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


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
