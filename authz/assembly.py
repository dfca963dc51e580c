"""Build the pipeline from config. The order of the stages is decided here and nowhere else."""

from __future__ import annotations

import dataclasses

from authz.audit.log import AuditLogs
from authz.audit.stage import build_audit_stage
from authz.config import Config
from authz.identity.assertion import KeyRing
from authz.identity.metadata import metadata_url
from authz.identity.stage import build_identity_stage
from authz.limits.stage import LimitsStage
from authz.pipeline import Pipeline, Stage
from authz.policy.stage import PolicyStage, challenge_for
from authz.redaction.restore import PlaceholderStore
from authz.redaction.stage import build_redaction_stage
from authz.request import BodyStash, Reader
from authz.routing import RoutingStage
from authz.sessions.stage import SessionStage
from authz.signin.keys import with_signin_keys
from authz.store import Store


@dataclasses.dataclass(frozen=True, slots=True)
class Shared:
    """State that outlives a config generation: owned by the runtime, handed to every pipeline it
    builds, so a reload keeps it (and nothing of it sits in a module global)."""

    keyring: KeyRing = dataclasses.field(default_factory=KeyRing)   # assertion signing keys
    stash: BodyStash = dataclasses.field(default_factory=BodyStash)  # rewritten bodies, Check -> Process
    audit_logs: AuditLogs = dataclasses.field(default_factory=AuditLogs)  # one writer per chain, across reloads
    placeholders: PlaceholderStore = dataclasses.field(default_factory=PlaceholderStore)  # restore: Check -> Process
    # the authorization server's token keys (a generated one shared by the workers under this name)
    signin_keys: KeyRing = dataclasses.field(default_factory=lambda: KeyRing(name="signin"))


def build_pipeline(config: Config, store: Store, *, shared: Shared | None = None) -> Pipeline:
    """identity → sessions → policy → routing → limits → redaction → audit.

    Before them all, the request is read once (``Reader``, by ``policy.protocols``); every stage
    works on that reading. Each stage is built from its config section (and the shared store);
    nothing here touches the network, so a reload can build a new pipeline without disturbing the
    one serving. ``shared`` is the runtime's lasting state (a fresh one when none is given).
    """
    shared = shared or Shared()
    identity = config.identity
    if config.signin.enabled:
        identity = with_signin_keys(identity, config.signin, shared.signin_keys)
    stages: list[Stage] = [
        build_identity_stage(identity, store=store, keyring=shared.keyring),
    ]
    if config.sessions.enabled:  # a session id is honoured only for the principal that opened it
        stages.append(SessionStage(config.sessions, store))
    stages += [
        PolicyStage(config.policy, challenge=challenge_for(metadata_url(config.identity))),
        RoutingStage(config.routing),
        LimitsStage(config.limits, store, meter_all=config.audit.enabled),
    ]
    if config.redaction.enabled:
        stages.append(build_redaction_stage(config.redaction, store, placeholders=shared.placeholders))
    if config.audit.enabled:  # last: it records what every other stage decided
        stages.append(build_audit_stage(config.audit, instance=config.instance_id, logs=shared.audit_logs))
    return Pipeline(stages, reader=Reader(config.policy.protocols), stash=shared.stash,
                    sealed_prefix=config.server.header_namespace)
