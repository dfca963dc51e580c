"""Routing: pick the upstream by who the user is (Envoy routes on the header this sets)."""

from authz.routing.config import RoutingConfig
from authz.routing.stage import RoutingStage

__all__ = ["RoutingConfig", "RoutingStage"]
