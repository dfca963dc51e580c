import pytest

from authz.config import load_config, parse_config
from authz.errors import ConfigError


def problems(text: str, env=None) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env=env or {})
    return dict(info.value.problems)


def test_empty_file_gives_secure_defaults():
    cfg = parse_config("", env={})
    assert cfg.store.redis_url == ""
    assert cfg.server.debug_headers is False
    assert cfg.log.format == "json"


def test_unknown_keys_are_reported_with_their_path():
    found = problems("server:\n  grpc_adress: 1\nstore:\n  pool: 3\n")
    assert found == {"server.grpc_adress": "unknown key", "store.pool": "unknown key"}


def test_every_problem_is_reported_at_once():
    found = problems("version: 2\nstore:\n  timeout_ms: 0\n  redis_url: http://x\n"
                     "server:\n  grpc_address: nope\n")
    assert set(found) == {"version", "store.timeout_ms", "store.redis_url", "server.grpc_address"}


def test_duplicate_keys_are_refused_with_the_line():
    found = problems("store:\n  timeout_ms: 5\n  timeout_ms: 6\n")
    (where, message), = found.items()
    assert "line 3" in where and "duplicate key 'timeout_ms'" in message


def test_invalid_yaml_names_the_line():
    found = problems("store: [unclosed\n")
    (where, message), = found.items()
    assert where.startswith("line") and "invalid YAML" in message


def test_top_level_must_be_a_mapping():
    assert problems("- a\n- b\n") == {"": "the top level must be a mapping"}


def test_environment_interpolation():
    cfg = parse_config("store:\n  redis_url: ${REDIS_URL:-}\n", env={})
    assert cfg.store.redis_url == ""
    cfg = parse_config("store:\n  redis_url: ${REDIS_URL:-}\n", env={"REDIS_URL": "redis://h:1/0"})
    assert cfg.store.redis_url == "redis://h:1/0"
    assert problems("store:\n  redis_url: ${NOPE}\n") == {
        "store.redis_url": "environment variable NOPE is not set and has no default"}


def test_config_is_frozen():
    cfg = parse_config("", env={})
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        cfg.store.timeout_ms = 1  # type: ignore[misc]


def test_load_config_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)


def test_reference_config_is_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    _, sha = load_config(root / "deploy/authz/authz.yaml")
    assert len(sha) == 64


def test_a_check_across_sections_is_reported_at_the_key_it_names():
    found = problems("identity:\n  api_keys:\n    store: redis\n")
    assert found == {"identity.api_keys.store": "is redis but store.redis_url is empty: set store.redis_url "
                                                "(or use store: config)"}


@pytest.mark.parametrize(("text", "key"), [
    ("limits: {budgets: [{id: d, limit: .inf}]}", "limits.budgets[0].limit"),
    ("limits: {budgets: [{id: d, limit: .nan}]}", "limits.budgets[0].limit"),
    ("limits: {budgets: [{id: d, limit: 1e300}]}", "limits.budgets[0].limit"),
    ("limits: {budgets: [{id: d, unit: cost, limit: 5}], prices: {'g*': {input: .inf, output: 1}}}",
     "limits.prices.g*.input"),
    ("limits: {estimate: {bytes_per_token: 1e-300}}", "limits.estimate.bytes_per_token"),
    ("limits: {rate_limits: [{id: r, rate: 99999999999/s}]}", "limits.rate_limits[0].rate"),
    ("limits: {rate_limits: [{id: r, rate: 1/99999d}]}", "limits.rate_limits[0].rate"),
    ("store: {health_interval_seconds: .inf}", "store.health_interval_seconds"),
])
def test_non_finite_or_absurd_numbers_are_refused_with_their_key(text, key):
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert key in str(err.value), str(err.value)


@pytest.mark.parametrize(("text", "message"), [
    ("store: {redis_url: 'redis://a:1', cluster: true, cluster_seeds: ['b']}", "[0] 'b' is not host:port"),
    ("store: {redis_url: 'redis://a:1', cluster: true, cluster_seeds: ['a:1', 'b:0']}", "[1] 'b:0'"),
    ("store: {redis_url: 'redis://a:1', cluster: true, cluster_seeds: ['b:70000']}", "is not host:port"),
    ("store: {redis_url: 'redis://a:1', cluster: true, cluster_seeds: ['b:1', 'b:1']}", "twice"),
])
def test_cluster_seeds_are_checked_at_load(text, message):
    assert message in problems(text)["store.cluster_seeds"]


@pytest.mark.parametrize(("text", "message"), [
    ("store: {redis_url: 'redis://a:1', cluster_seeds: ['b:1']}", "cluster is false"),
    ("store: {redis_url: 'unix:///s', cluster: true, cluster_seeds: ['b:1']}", "redis:// or rediss://"),
])
def test_cluster_seeds_need_a_cluster_url(text, message):
    assert message in problems(text)["store"]


def test_cluster_seeds_take_names_and_addresses():
    cfg = parse_config("store: {redis_url: 'rediss://u:p@a:1', cluster: true, "
                       "cluster_seeds: ['redis-1.ns.svc:6379', '10.0.0.2:7000', '[fd00::2]:7001']}", env={})
    from authz.store.resp import parse_seed
    assert [parse_seed(s) for s in cfg.store.cluster_seeds] == [
        ("redis-1.ns.svc", 6379), ("10.0.0.2", 7000), ("fd00::2", 7001)]
