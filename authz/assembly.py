"""Build the pipeline from config. The order of the stages is decided here and nowhere else."""

from __future__ import annotations

from authz.config import Config
from authz.limits.stage import LimitsStage
from authz.pipeline import Pipeline, Stage
from authz.policy.stage import PolicyStage
from authz.routing import RoutingStage
from authz.store import Store


def build_pipeline(config: Config, store: Store) -> Pipeline:
    """identity → policy → routing → limits → redaction → audit.

    Stages arrive issue by issue; each is built from its config section and the shared store.
    """
    stages: list[Stage] = [
        PolicyStage(config.policy),
        RoutingStage(config.routing),
        LimitsStage(config.limits, store),
    ]
    return Pipeline(stages)
