"""The one matching language: ``match`` sections and ``when``/``require`` conditions, validated
at load (``config``) and compiled once (``match``, ``conditions``). Policy, routing, limits and
redaction all decide with it, on the same request view."""

from authz.matching.conditions import CompiledConditions, Failure, claim_at
from authz.matching.match import CompiledMatch
from authz.patterns import Glob, host_without_port

__all__ = ["CompiledConditions", "CompiledMatch", "Failure", "Glob", "claim_at", "host_without_port"]
