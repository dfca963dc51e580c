"""``match`` sections compiled once: does a request (and what it is about) fit?"""

from __future__ import annotations

from collections.abc import Callable

from authz.matching import config as c
from authz.patterns import Glob, host_without_port
from authz.request import Request
from authz.request.action import Action

Predicate = Callable[[Request, Action], bool]


class CompiledMatch:
    """Does a request (and what it is about) fit a ``match`` section? Built once as a tuple of
    the predicates the section names, cheapest and most selective first."""

    def __init__(self, m: c.Match) -> None:
        checks: list[Predicate] = []
        if m.mcp is not None:
            checks.append(lambda r, act: act.protocol == "mcp")
            if m.mcp.methods:
                methods = Glob(m.mcp.methods)
                checks.append(lambda r, act: methods(act.kind))
            if m.mcp.tools:
                tools = Glob(m.mcp.tools)
                checks.append(lambda r, act: act.kind == "tools/call" and tools(act.name or ""))
            if m.mcp.resources:
                resources = Glob(m.mcp.resources)
                checks.append(lambda r, act: act.kind.startswith("resources/")
                              and resources(act.name or ""))
            if m.mcp.prompts:
                prompts = Glob(m.mcp.prompts)
                checks.append(lambda r, act: act.kind == "prompts/get" and prompts(act.name or ""))
        if m.llm is not None:
            checks.append(lambda r, act: act.protocol == "llm")
            if m.llm.apis:
                apis = frozenset(m.llm.apis)
                checks.append(lambda r, act: act.kind in apis)
            if m.llm.models:
                models = Glob(m.llm.models)
                checks.append(lambda r, act: act.model is not None and models(act.model))
        if m.methods:
            methods_http = frozenset(m.methods)
            checks.append(lambda r, act: r.method.upper() in methods_http)
        if m.paths:
            paths = Glob(m.paths)
            checks.append(lambda r, act: paths(r.path_only))
        if m.hosts:
            hosts = Glob(m.hosts, ignore_case=True)
            checks.append(lambda r, act: hosts(host_without_port(r.host).lower()))
        self._checks = tuple(checks)

    def __call__(self, request: Request, action: Action) -> bool:
        for check in self._checks:
            if not check(request, action):
                return False
        return True
