"""[GEN]: generation: one image per link, from the diffusion decoder conditioned on the mapped link states."""

from __future__ import annotations

from router.projectors import generation_projector
from router.routes.base import RouteSpec, register_route
from router.routes.common import generator_batch, generator_train_batch, image_items
from router.schemas import GeneratedImage

SPEC = register_route(
    RouteSpec(
        "GEN",
        "generator",
        generation_projector,
        generator_batch,
        image_items,
        generator_train_batch,
        item_type=GeneratedImage,
        noun="image",
    )
)
