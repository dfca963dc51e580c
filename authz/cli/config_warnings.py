"""Valid configs that probably do not do what their author meant: check-config prints these as
warnings (the file is still valid, the exit status stays 0)."""

from __future__ import annotations

from authz.config import Config


def config_warnings(config: Config) -> list[str]:
    found: list[str] = []
    identity = config.identity
    if identity.enabled and not identity.issuers and not identity.api_keys.enabled:
        found.append("identity: no issuers and no API keys: no request can carry an identity, every one is "
                     "anonymous (add identity.issuers)")
    policy = config.policy
    if not policy.rules:
        found.append(f"policy: no rules: every request that is not public gets the default, {policy.default}"
                     + (" (nothing is allowed)" if policy.default == "deny" else " (everything is allowed)"))
    return found
