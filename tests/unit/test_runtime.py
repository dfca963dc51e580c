"""Reload: atomic swap, last good config kept on a bad file, ConfigMap-style symlink swaps."""

import asyncio
import os

from authz import metrics
from authz.runtime import Runtime

GOOD = "store:\n  timeout_ms: {t}\nreload:\n  poll_seconds: 0.05\n"


def reload_count(result: str) -> float:
    return metrics.CONFIG_RELOADS.labels(result=result)._value.get()


async def wait_for(predicate, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_bad_reload_keeps_the_last_good_config(tmp_path):
    path = tmp_path / "authz.yaml"
    path.write_text(GOOD.format(t=50))
    rt = Runtime(path)
    await rt.start()
    first = rt.current
    failures = reload_count("failure")

    path.write_text("store:\n  timeout_mss: 10\n")
    assert await rt.reload() is False
    assert rt.current is first
    assert "store.timeout_mss: unknown key" in rt.last_reload_error
    assert reload_count("failure") == failures + 1
    ready, components = rt.readiness()
    assert ready and components["config"]["last_reload_error"]

    path.write_text(GOOD.format(t=70))
    assert await rt.reload() is True
    assert rt.config.store.timeout_ms == 70 and rt.current is not first
    assert rt.last_reload_error == ""
    await rt.close()


async def test_reload_failing_gauge_stays_set_while_the_bad_file_stays(tmp_path):
    """authz_config_reload_failing is what AuthzConfigReloadFailing reads: 1 from the refused
    reload until a load succeeds, however much time passes or how often the same file is read."""
    failing = metrics.CONFIG_RELOAD_FAILING._value.get
    path = tmp_path / "authz.yaml"
    path.write_text(GOOD.format(t=50))
    rt = Runtime(path)
    await rt.start()
    assert failing() == 0
    path.write_text("store:\n  timeout_mss: 10\n")
    assert await rt.reload() is False
    assert failing() == 1
    assert await rt.reload(cause="SIGHUP") is False  # the same bad file again
    assert failing() == 1
    path.write_text(GOOD.format(t=70))
    assert await rt.reload() is True
    assert failing() == 0
    await rt.close()


async def test_readiness_keeps_the_replica_when_only_the_store_is_down(tmp_path):
    """Redis is shared: its outage must not take every replica out of the Service at once. By
    default the store is a component of /readyz, not a condition of it; the old behaviour is one
    setting away."""
    from authz.runtime import ComponentHealth

    path = tmp_path / "authz.yaml"
    path.write_text(GOOD.format(t=50))
    rt = Runtime(path)
    await rt.start()
    rt.store_health = ComponentHealth(ok=False, detail="connection refused")
    ready, components = rt.readiness()
    assert ready and components["store"] == {"ok": False, "backend": "memory", "detail": "connection refused"}
    rt.draining = True
    assert rt.readiness()[0] is False
    await rt.close()

    path.write_text(GOOD.format(t=50).replace("store:\n", "store:\n  required_for_readiness: true\n"))
    rt = Runtime(path)
    await rt.start()
    rt.store_health = ComponentHealth(ok=False, detail="connection refused")
    assert rt.readiness()[0] is False
    await rt.close()


async def test_watcher_follows_a_configmap_symlink_swap(tmp_path):
    # Kubernetes mounts a ConfigMap as authz.yaml -> ..data/authz.yaml, ..data -> ..<timestamp>;
    # an update writes a new timestamped dir and atomically renames the ..data symlink.
    def write_version(name: str, text: str) -> None:
        d = tmp_path / name
        d.mkdir()
        (d / "authz.yaml").write_text(text)
        tmp_link = tmp_path / "..data_tmp"
        os.symlink(name, tmp_link)
        os.replace(tmp_link, tmp_path / "..data")

    write_version("..v1", GOOD.format(t=50))
    os.symlink("..data/authz.yaml", tmp_path / "authz.yaml")
    rt = Runtime(tmp_path / "authz.yaml")
    await rt.start()
    rt.start_background()

    write_version("..v2", GOOD.format(t=60))
    await wait_for(lambda: rt.config.store.timeout_ms == 60)

    write_version("..v3", "store: [broken\n")
    await wait_for(lambda: rt.last_reload_error != "")
    assert rt.config.store.timeout_ms == 60
    assert "invalid YAML" in rt.last_reload_error
    await rt.close()


async def test_draining_makes_the_runtime_unready(tmp_path):
    path = tmp_path / "authz.yaml"
    path.write_text("")
    rt = Runtime(path)
    await rt.start()
    assert rt.readiness()[0]
    rt.draining = True
    ready, components = rt.readiness()
    assert not ready and components["draining"] == {"ok": False}
    await rt.close()


async def test_a_rotated_assertion_key_file_is_picked_up_without_touching_the_config(tmp_path):
    from authz.identity.assertion import SigningKey

    key_file = tmp_path / "assertion.pem"
    old, new = SigningKey.generate(), SigningKey.generate()
    key_file.write_bytes(old.private_pem())
    path = tmp_path / "authz.yaml"
    path.write_text(GOOD.format(t=50) + f"identity:\n  assertion:\n    key_files: [{key_file}]\n")
    rt = Runtime(path)
    await rt.start()
    rt.start_background()
    try:
        first = rt.current
        keyring = rt.shared.keyring  # the runtime's: it outlives the reload
        assert keyring.active.kid == old.kid
        key_file.write_bytes(new.private_pem())  # the Secret rotated in place; authz.yaml untouched
        await wait_for(lambda: rt.current is not first)
        assert keyring.active.kid == new.kid
        published = {k["kid"] for k in keyring.jwks()["keys"]}
        assert {old.kid, new.kid} <= published  # the old key stays published while its assertions live
    finally:
        await rt.close()


async def test_readiness_reports_identity_and_needs_some_issuer_keys(tmp_path):
    from authz.dev.stack import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nobody answers: the only issuer is down at start
    path = tmp_path / "authz.yaml"
    path.write_text(f"identity:\n  resource: https://mcp.example.com/mcp\n  issuers:\n"
                    f"    - {{name: idp, issuer: '{dead}', allow_http: true,\n"
                    f"       jwks_cache: {{timeout_seconds: 0.5}}}}\n")
    rt = Runtime(path)
    await rt.start()
    ready, components = rt.readiness()
    assert not ready and components["identity"]["ok"] is False
    assert components["identity"]["issuers"]["idp"]["last_error"].startswith("network_error")
    await rt.close()
