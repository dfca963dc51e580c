"""The public API is what the package docstring says it is."""

from __future__ import annotations

import authz.identity
import authz.identity.assertion


def test_identity_exports():
    assert authz.identity.__all__ == sorted([
        "IdentityConfig", "IdentityStage", "IssuerConfig", "build_identity_stage",
        "hash_api_key", "is_metadata_path", "metadata_paths", "metadata_url",
        "protected_resource_metadata"])
    for name in authz.identity.__all__:
        assert getattr(authz.identity, name) is not None
        assert name in dir(authz.identity)


def test_assertion_exports():
    assert sorted(authz.identity.assertion.__all__) == sorted([
        "ASSERTION_TYP", "AssertionSigner", "AssertionVerifier", "InvalidAssertion", "KeyRing",
        "SigningKey", "verify"])


def test_every_rejection_has_its_own_reason():
    from authz.identity import errors

    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.IdentityError)]
    reasons = [c.reason for c in classes]
    assert len(reasons) == len(set(reasons)) >= 20
    assert all(c.status == 401 for c in classes)
