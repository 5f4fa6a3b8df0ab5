"""[POSE]: keypoints: instances with their keypoints, from the keypoint head on the detector's queries."""

from __future__ import annotations

from router.projectors import perception_projector
from router.routes.base import RouteSpec, register_route
from router.routes.common import detector_batch, detector_train_batch, keypoint_items
from router.schemas import Keypoints

SPEC = register_route(
    RouteSpec(
        "POSE",
        "keypoints",
        perception_projector,
        detector_batch,
        keypoint_items,
        detector_train_batch,
        item_type=Keypoints,
        noun="pose",
    )
)
