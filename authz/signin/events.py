"""Every grant, refusal and revocation: one log line, one metric, one audit record.

The audit record goes into the sidecar's audit chain (type ``signin``) when the audit log is on;
it names the client, the user (subject), the event and the OAuth error, never a code or a token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from authz.audit.log import AuditLog

if TYPE_CHECKING:  # the whole config, for annotations only: authz.config imports this package's section
    from authz.config import Config

log = logging.getLogger("authz.signin")

EVENTS = Counter("authz_signin_events_total",
                 "Authorization server events: grants, refusals, revocations, by OAuth error.",
                 ["event", "error"])

EVENT_NAMES = ("registered", "consented", "code_issued", "token_issued", "refreshed", "refused",
               "refresh_reused", "code_reused", "revoked")


def record(config: Config, event: str, *, audit: Iterable[AuditLog], error: str = "",
           client_id: str | None = None, subject: str | None = None, endpoint: str = "", **facts: Any) -> None:
    assert event in EVENT_NAMES, event
    EVENTS.labels(event=event, error=error or "none").inc()
    fields = {"event": f"signin.{event}", "endpoint": endpoint, "client_id": client_id, "subject": subject,
              "error": error or None, **facts}
    log.info("signin %s %s", event, error, extra={k: v for k, v in fields.items() if v is not None})
    if not config.audit.enabled:
        return
    for audit_log in audit:
        if audit_log.instance == config.instance_id and audit_log.users > 0:
            audit_log.offer({"type": "signin", "time_ms": int(time.time() * 1000),
                             **{k: v for k, v in fields.items() if v is not None}})
            return
