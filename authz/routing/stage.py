"""The routing stage: choose the upstream by who the user is; Envoy does the routing.

The stage always removes the client's own copy of the route header, then (on routed paths) sets
it from policy. Envoy's ext_authz filter has ``clear_route_cache: true``, so the changed header
makes Envoy pick the route again.
"""

from __future__ import annotations

import datetime

from authz.matching import CompiledConditions, Glob
from authz.model import Context
from authz.pipeline import Stage
from authz.routing.config import RoutingConfig


class RoutingStage(Stage):
    name = "routing"

    def __init__(self, cfg: RoutingConfig) -> None:
        self.cfg = cfg
        self.header = cfg.header
        self._paths = Glob(cfg.paths)
        self._choices = tuple((CompiledConditions(r.when), Glob(r.models), r.route) for r in cfg.routes)

    async def on_request(self, ctx: Context) -> None:
        ctx.mutations.remove_header(self.header)  # a client never picks its own route
        if not self.cfg.enabled or not self._paths(ctx.request.path_only):
            return
        model = ctx.model
        now = datetime.datetime.now(datetime.UTC)
        route = self.cfg.default
        for conditions, models, choice in self._choices:
            if models and not (model and models(model)):
                continue
            if conditions.first_failure(ctx.principal, ctx.request, now) is None:
                route = choice
                break
        ctx.mutations.set_header(self.header, route)
        ctx.mutations.clear_route_cache = True
        ctx.facts["route"] = route
