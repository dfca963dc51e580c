"""The ``routing:`` section of the config file."""

from __future__ import annotations

from pydantic import Field

from authz.matching.config import Conditions
from authz.schema import Model


class RouteChoice(Model):
    route: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    when: Conditions = Conditions()
    models: tuple[str, ...] = ()       # only for these requested models (wildcards allowed)


class RoutingConfig(Model):
    """Pick an upstream by who the user is. Envoy routes on ``header``; the client's own value
    of that header is always removed first."""

    enabled: bool = False
    header: str = Field("x-authz-route", pattern=r"^[a-z0-9-]{1,64}$")
    paths: tuple[str, ...] = ("/v1/*",)
    routes: tuple[RouteChoice, ...] = ()
    default: str = Field("general", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
