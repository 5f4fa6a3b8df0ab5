"""[EDIT]: editing: the request's first image edited as the link states say (InstructPix2Pix)."""

from __future__ import annotations

from router.projectors import generation_projector
from router.routes.base import RouteSpec, register_route
from router.routes.common import editor_batch, editor_train_batch, image_items
from router.schemas import GeneratedImage

SPEC = register_route(
    RouteSpec(
        "EDIT",
        "editor",
        generation_projector,
        editor_batch,
        image_items,
        editor_train_batch,
        item_type=GeneratedImage,
        noun="edited image",
    )
)
