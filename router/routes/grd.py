"""[GRD]: grounding: the one box a referring phrase names (kept whatever its score)."""

from __future__ import annotations

from router.projectors import perception_projector
from router.routes.base import RouteSpec, register_route
from router.routes.common import detector_batch, detector_items, detector_train_batch
from router.schemas import Detection

SPEC = register_route(
    RouteSpec(
        "GRD",
        "detector",
        perception_projector,
        detector_batch,
        detector_items,
        detector_train_batch,
        item_type=Detection,
        noun="box",
    )
)
