import pytest

from authz.errors import Forbidden, InternalError
from authz.model import Context, Exchange, Request
from authz.pipeline import Pipeline, Stage


def make_request(**kw) -> Request:
    base = dict(id="r1", method="GET", scheme="http", host="h", path="/p?q=1", headers={})
    base.update(kw)
    return Request(**base)


class Recorder(Stage):
    def __init__(self, name: str, log: list) -> None:
        self.name = name
        self.log = log

    async def on_request(self, ctx: Context) -> None:
        self.log.append(self.name)
        ctx.mutations.set_header(f"x-{self.name}", "1")


class Denier(Stage):
    name = "denier"

    async def on_request(self, ctx: Context) -> None:
        raise Forbidden("no", reason="test.denied")


class Crasher(Stage):
    name = "crasher"

    async def on_request(self, ctx: Context) -> None:
        raise KeyError("boom")

    async def on_complete(self, ex: Exchange) -> None:
        raise RuntimeError("cleanup failed")


class Completer(Stage):
    name = "completer"

    def __init__(self) -> None:
        self.completed = 0

    async def on_complete(self, ex: Exchange) -> None:
        self.completed += 1


async def test_stages_run_in_order_and_edit_the_context():
    log: list[str] = []
    p = Pipeline([Recorder("a", log), Recorder("b", log)])
    ctx = Context(request=make_request())
    await p.run("on_request", ctx)
    assert log == ["a", "b"]
    assert ctx.mutations.set_headers == {"x-a": "1", "x-b": "1"}


async def test_a_denial_stops_the_pipeline():
    log: list[str] = []
    p = Pipeline([Recorder("a", log), Denier(), Recorder("b", log)])
    with pytest.raises(Forbidden) as info:
        await p.run("on_request", Context(request=make_request()))
    assert info.value.reason == "test.denied" and info.value.status == 403
    assert log == ["a"]


async def test_a_crashing_stage_fails_closed_as_internal_error():
    p = Pipeline([Crasher()])
    with pytest.raises(InternalError) as info:
        await p.run("on_request", Context(request=make_request()))
    assert info.value.status == 500 and info.value.details == {"stage": "crasher"}


async def test_complete_runs_every_stage_even_after_a_failure():
    done = Completer()
    p = Pipeline([Crasher(), done])
    await p.complete(Exchange(request=make_request()))
    assert done.completed == 1


def test_only_implemented_hooks_are_walked():
    p = Pipeline([Completer()])
    assert p.has("on_complete") and not p.has("on_request")


def test_duplicate_stage_names_are_refused():
    with pytest.raises(ValueError):
        Pipeline([Denier(), Denier()])


def test_request_helpers():
    r = make_request(headers={"authorization": "a,b"}, header_lists={"authorization": ("a", "b")})
    assert r.path_only == "/p" and r.query == "q=1"
    assert r.header_values("Authorization") == ("a", "b")
    assert r.header_values("missing") == ()


class SetsRoute(Stage):
    name = "route"

    async def on_request(self, ctx: Context) -> None:
        ctx.mutations.set_headers["x-authz-route"] = "general"  # written directly, as stages may


async def test_every_header_under_the_namespace_is_removed_and_a_stage_s_own_value_wins():
    req = make_request(headers={"x-authz-route": "medical", "x-authz-anything": "1", "x-authz-": "2",
                                "x-authzz": "kept", "x-other": "kept"})
    ctx = Context(request=req)
    await Pipeline([SetsRoute()]).check(ctx)
    assert ctx.mutations.remove_headers == {"x-authz-anything", "x-authz-"}
    assert ctx.mutations.set_headers == {"x-authz-route": "general"}
    other = Context(request=req)
    await Pipeline([], sealed_prefix="x-corp-").check(other)
    assert other.mutations.remove_headers == set()


def test_the_namespace_cannot_cover_standard_headers():
    from authz.config import ServerConfig

    assert ServerConfig(header_namespace="X-Corp-").header_namespace == "x-corp-"
    for bad in ("x-", "x-request-", "x-forwarded-", "authz", "x-api-"):
        with pytest.raises(ValueError):
            ServerConfig(header_namespace=bad)
